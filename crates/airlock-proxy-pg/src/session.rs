//! One client session: startup (TLS if asked and offered), the client's
//! SCRAM login, Airlock's own login upstream, then the loop that decides
//! every statement before the server sees it.
//!
//! Two halves run at once. The reader (this task) reads the client's
//! messages, decides simple queries whole and extended-protocol batches at
//! `Sync` or `Flush` (when bound values are known), and forwards what
//! passes. The writer relays the server's replies to the client, scanning
//! rows, and writes Airlock's own replies (notices, refusals) in their
//! place in the stream: each forwarded `Sync`/`Query` and each refusal is a
//! [`Cmd`] in one ordered queue, matched to the server's `ReadyForQuery`
//! messages in turn. A refusal sends the server a bare `Sync` and answers
//! the client with the error and that `Sync`'s `ReadyForQuery`, so the
//! transaction status the client sees is the server's own, and a refused
//! statement inside `BEGIN` leaves the transaction open and usable.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use airlock_api::{Disposition, ErrorCode, FindingsBody, Outcome as GrantOutcome};
use airlock_client::ClientError;
use airlock_core::{GrantId, UserName};
use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::auth::{self, ScramServer, Step, UpstreamLogin};
use crate::classify::{self, Statement};
use crate::codec::{self, build, Frame, Startup};
use crate::config::RowsDlp;
use crate::decide::{self, Decided, Outcome, Session};
use crate::results::{Plan, Results, RowOut};
use crate::{Shared, Upstream};

/// Anything a session talks over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The connection failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client or server broke the protocol.
    #[error("protocol: {0}")]
    Codec(#[from] codec::CodecError),
    /// A login failed.
    #[error("{0}")]
    Login(#[from] auth::LoginError),
    /// Refused and told (the message already went to the client).
    #[error("{0}")]
    Refused(String),
    /// Took too long.
    #[error("timed out")]
    Timeout,
}

/// How long a client has from connecting to being logged in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting and logging in upstream may take.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(15);

/// The startup parameters passed on to the server; the rest (`options`,
/// which could set `search_path` or `role`, and anything unknown) are not.
const PASSED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

/// Whether the server would read the text of a query sent in encoding
/// `name` as other characters than the UTF-8 that libpg_query parses (and
/// that the proxy requires): true for every encoding but UTF-8 and
/// `SQL_ASCII` (no conversion). An allowlist: a denylist of encodings
/// whose characters can end in `\` or `'` missed `SHIFT_JIS_2004`, under
/// which a read permit ran a hidden DELETE; and under LATIN1 the UTF-8
/// bytes of `café` name another table on the server than the one decided
/// (both found by black-box passes). Names are compared as PostgreSQL
/// compares them: letters and digits only, any case.
fn unsafe_encoding(name: &str) -> bool {
    const SAFE: &[&str] = &["UTF8", "UNICODE", "SQLASCII"];
    let n: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_uppercase();
    !SAFE.contains(&n.as_str())
}

/// A `ParameterStatus` message's name and value.
fn parameter_status(body: &[u8]) -> (&[u8], std::borrow::Cow<'_, str>) {
    let mut parts = body.split(|b| *b == 0);
    let name = parts.next().unwrap_or_default();
    (
        name,
        String::from_utf8_lossy(parts.next().unwrap_or_default()),
    )
}

/// Whether a `ParameterStatus` of the server moves a setting the proxy
/// pins: the session would read text differently from Airlock.
fn moves_pinned(name: &[u8], value: &str) -> bool {
    (name == b"standard_conforming_strings" && value != "on")
        || (name == b"client_encoding" && unsafe_encoding(value))
}

async fn read_more(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
) -> Result<bool, SessionError> {
    Ok(io.read_buf(buf).await? > 0)
}

async fn read_frame(
    io: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Frame>, SessionError> {
    loop {
        if let Some(f) = codec::frame_within(buf, max)? {
            return Ok(Some(f));
        }
        if !read_more(io, buf).await? {
            return Ok(None);
        }
    }
}

async fn refuse(io: &mut (impl AsyncWrite + Unpin), code: &str, message: String) -> SessionError {
    let _ = io.write_all(&build::fatal(code, &message)).await;
    let _ = io.flush().await;
    SessionError::Refused(message)
}

/// Serves one client connection to its end.
pub async fn run(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Result<(), SessionError> {
    let _ = tcp.set_nodelay(true);
    let Some(slot) = shared.login_slot(peer.ip()) else {
        let mut tcp = tcp;
        let m = "too many connections from this address are logging in at once";
        return Err(refuse(&mut tcp, "53300", m.into()).await);
    };
    let login = tokio::time::timeout(LOGIN_TIMEOUT, login(&shared, Box::new(tcp), peer));
    let logged = login.await;
    drop(slot);
    let Ok(logged) = logged else {
        return Err(SessionError::Timeout);
    };
    let Some(mut s) = logged? else {
        return Ok(());
    };
    let upstream = tokio::time::timeout(
        UPSTREAM_TIMEOUT,
        connect_upstream(&shared.upstream, &s.params),
    );
    let (up, up_buf, greeting, key) = match upstream.await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::warn!(proxy = %shared.name, error = %e, "upstream login failed");
            return Err(refuse(
                &mut s.io,
                "08006",
                "Airlock could not connect to the database".into(),
            )
            .await);
        }
        Err(_) => {
            return Err(refuse(
                &mut s.io,
                "08006",
                "the database did not answer in time".into(),
            )
            .await)
        }
    };
    for m in &greeting {
        s.io.write_all(m).await?;
    }
    s.io.flush().await?;
    let cancel = Arc::new(Notify::new());
    if let Some(k) = key {
        shared.register_cancel(k, cancel.clone());
    }
    let r = relay(&shared, s, up, up_buf, cancel, peer).await;
    if let Some(k) = key {
        shared.unregister_cancel(k);
    }
    r
}

struct LoggedIn {
    io: Box<dyn Io>,
    buf: BytesMut,
    user: UserName,
    /// The public id of the key the user logged in with.
    key: String,
    params: Vec<(String, String)>,
}

async fn login(
    shared: &Shared,
    mut io: Box<dyn Io>,
    peer: SocketAddr,
) -> Result<Option<LoggedIn>, SessionError> {
    let mut buf = BytesMut::with_capacity(8192);
    let mut tls = false;
    let startup = loop {
        let s = loop {
            if let Some(s) = codec::startup(&mut buf)? {
                break s;
            }
            if !read_more(&mut io, &mut buf).await? {
                return Ok(None);
            }
        };
        match s {
            Startup::Ssl if !tls => {
                match &shared.tls {
                    Some(acceptor) => {
                        // Bytes sent after SSLRequest before the handshake
                        // would be read as if inside TLS (CVE-2021-23214).
                        if !buf.is_empty() {
                            return Err(SessionError::Refused("data after SSLRequest".into()));
                        }
                        io.write_all(b"S").await?;
                        io.flush().await?;
                        io = Box::new(acceptor.accept(io).await?);
                        tls = true;
                    }
                    None => {
                        io.write_all(b"N").await?;
                        io.flush().await?;
                    }
                }
            }
            Startup::GssEnc => {
                io.write_all(b"N").await?;
                io.flush().await?;
            }
            Startup::Cancel { pid, secret } => {
                shared.cancel(pid, secret).await;
                return Ok(None);
            }
            Startup::Ssl => return Err(SessionError::Refused("SSLRequest inside TLS".into())),
            s @ Startup::Session { .. } => break s,
        }
    };
    let Startup::Session { params } = startup else {
        return Ok(None);
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("replication").is_some_and(|v| v != "false" && v != "0" && v != "off") {
        return Err(refuse(
            &mut io,
            "28000",
            "replication connections are not served by Airlock's proxy".into(),
        )
        .await);
    }
    // Given twice, the server takes the last, and this check would read
    // the first (found by a review: `UTF8` then `SHIFT_JIS_2004`).
    if let Some((twice, _)) = params
        .iter()
        .enumerate()
        .find_map(|(i, (n, _))| params[..i].iter().find(|(m, _)| m == n))
    {
        let m = format!("the startup parameter {twice:?} is given twice");
        return Err(refuse(&mut io, "08P01", m).await);
    }
    if get("client_encoding").is_some_and(unsafe_encoding) {
        let m = "Airlock's proxy reads queries as UTF-8: use client_encoding UTF8";
        return Err(refuse(&mut io, "22023", m.into()).await);
    }
    let Some(user) = get("user").and_then(|u| UserName::parse(u).ok()) else {
        return Err(refuse(
            &mut io,
            "28000",
            "the user name is not an Airlock user name".into(),
        )
        .await);
    };
    let database = get("database").unwrap_or(user.as_str());
    if database != shared.upstream.database {
        let m = format!(
            "database \"{database}\" is not served here; this proxy serves \"{}\"",
            shared.upstream.database
        );
        return Err(refuse(&mut io, "3D000", m).await);
    }
    let failed = |user: &UserName| format!("password authentication failed for user \"{user}\"");
    io.write_all(&auth::offer()).await?;
    io.flush().await?;
    let Some(first) = read_frame(&mut io, &mut buf, codec::MAX_AUTH).await? else {
        return Ok(None);
    };
    if first.tag != b'p' {
        return Err(refuse(&mut io, "08P01", "expected a SASL initial response".into()).await);
    }
    let (server, reply) = match ScramServer::start(user.clone(), first.body()) {
        Ok(x) => x,
        Err(e) => return Err(refuse(&mut io, "28000", e.to_string()).await),
    };
    io.write_all(&reply).await?;
    io.flush().await?;
    let Some(fin) = read_frame(&mut io, &mut buf, codec::MAX_AUTH).await? else {
        return Ok(None);
    };
    if fin.tag != b'p' {
        return Err(refuse(&mut io, "08P01", "expected a SASL response".into()).await);
    }
    let body = match server.finish(&fin.body()) {
        Ok(b) => b,
        Err(_) => return Err(refuse(&mut io, "28P01", failed(&user)).await),
    };
    let key = match shared.decider.enforcer().gate().scram_login(&body).await {
        Ok(ok) if ok.user != user => {
            return Err(refuse(&mut io, "28P01", failed(&user)).await);
        }
        Ok(ok) => {
            for m in auth::accepted(&ok.server_signature) {
                io.write_all(&m).await?;
            }
            tracing::info!(proxy = %shared.name, user = %user, key = %ok.key, %peer, tls, "database session opened");
            ok.key
        }
        Err(ClientError::Api { status: 401, .. }) => {
            return Err(refuse(&mut io, "28P01", failed(&user)).await);
        }
        Err(e) => {
            tracing::warn!(proxy = %shared.name, error = %e, "could not check a login");
            return Err(refuse(
                &mut io,
                "28000",
                "Airlock could not check this login; refused".into(),
            )
            .await);
        }
    };
    let passed = params
        .into_iter()
        .filter(|(k, _)| PASSED_PARAMS.contains(&k.as_str()))
        .collect();
    Ok(Some(LoggedIn {
        io,
        buf,
        user,
        key,
        params: passed,
    }))
}

/// Connects and logs in upstream; the messages to pass on to the client
/// (`ParameterStatus`…, `BackendKeyData`, `ReadyForQuery`) and the cancel
/// key.
async fn connect_upstream(
    up: &Upstream,
    client_params: &[(String, String)],
) -> Result<(Box<dyn Io>, BytesMut, Vec<Bytes>, Option<(i32, i32)>), SessionError> {
    let tcp = tokio::net::TcpStream::connect((up.host.as_str(), up.port)).await?;
    let _ = tcp.set_nodelay(true);
    let mut io: Box<dyn Io> = Box::new(tcp);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    if let Some((connector, name)) = &up.tls {
        io.write_all(&build::ssl_request()).await?;
        io.flush().await?;
        let mut answer = [0u8; 1];
        io.read_exact(&mut answer).await?;
        if answer[0] != b'S' {
            return Err(auth::LoginError::Upstream("the database refused TLS".into()).into());
        }
        io = Box::new(connector.connect(name.clone(), io).await?);
    }
    // Pinned so the server reads text as Airlock parsed it: unqualified
    // names in `public`, backslashes in plain strings as plain characters.
    // `pg_temp` last: PostgreSQL looks there first unless the path names
    // it, so a temporary view named like a public table would be read
    // where Airlock decided the table (found by a black-box pass).
    let search_path = "-c search_path=public,pg_temp -c standard_conforming_strings=on";
    let mut params: Vec<(&str, &str)> = vec![
        ("user", up.user.as_str()),
        ("database", up.database.as_str()),
        ("options", search_path),
    ];
    for (k, v) in client_params {
        params.push((k.as_str(), v.as_str()));
    }
    // UTF-8 unless the client said (an allowed encoding): left out, the
    // server would take the database's or the role's, which may be LATIN1.
    if !params.iter().any(|(k, _)| *k == "client_encoding") {
        params.push(("client_encoding", "UTF8"));
    }
    io.write_all(&build::startup(&params)).await?;
    io.flush().await?;
    let mut login = UpstreamLogin::new(up.user.clone(), up.password.clone());
    let mut greeting = Vec::new();
    let mut key = None;
    loop {
        let Some(f) = read_frame(&mut io, &mut buf, codec::MAX_FRAME).await? else {
            return Err(
                auth::LoginError::Upstream("the database closed the connection".into()).into(),
            );
        };
        match f.tag {
            b'R' => match login.step(f.body())? {
                Step::Send(m) => {
                    io.write_all(&m).await?;
                    io.flush().await?;
                }
                Step::Wait | Step::Done => {}
            },
            b'E' => {
                let fields = codec::fields(f.body()).unwrap_or_default();
                let msg = fields
                    .iter()
                    .find(|(c, _)| *c == b'M')
                    .map(|(_, m)| m.clone())
                    .unwrap_or_default();
                return Err(auth::LoginError::Upstream(msg).into());
            }
            b'K' => {
                key = Some(codec::backend_key(f.body())?);
                greeting.push(f.raw);
            }
            b'Z' => {
                greeting.push(f.raw);
                return Ok((io, buf, greeting, key));
            }
            // A role's or database's default (`ALTER ROLE … SET
            // client_encoding`) arrives here, not in the startup packet;
            // so does the database's own encoding: in a single-byte one
            // the server folds and cuts names by its bytes, not as
            // libpg_query does (`CAFÉ` is `café` there; found by a review).
            b'S' => {
                let body = f.body();
                let (name, value) = parameter_status(&body);
                if name == b"server_encoding" && !value.eq_ignore_ascii_case("UTF8") {
                    return Err(auth::LoginError::Upstream(format!(
                        "the database's encoding is {value}; Airlock's proxy serves UTF8 databases only"
                    ))
                    .into());
                }
                if moves_pinned(name, &value) {
                    return Err(auth::LoginError::Upstream(
                        "the server's session would read text differently from Airlock (its client_encoding or standard_conforming_strings default); refused".into(),
                    )
                    .into());
                }
                greeting.push(f.raw);
            }
            _ => greeting.push(f.raw),
        }
    }
}

/// What the writer does at its turn in the reply stream.
enum Cmd {
    /// A forwarded `Sync` or `Query`: relay up to and including its
    /// `ReadyForQuery` (results as `plan` says), then report how it went.
    Pass {
        report: Option<oneshot::Sender<Report>>,
        /// For a pass no grant covers, with DLP on: what it was decided as,
        /// so what DLP finds in its replies goes on record.
        findings: Option<Decided>,
        plan: Plan,
        /// Ends with `Sync` (one `ReadyForQuery` answers it); a `Flush`
        /// batch's replies run on into the next batch's.
        ready: bool,
        /// Its plan already went to the writer's results.
        planned: bool,
    },
    /// A refusal: relay up to the `ReadyForQuery` of the `Sync` sent in its
    /// place, write `error` instead, then that `ReadyForQuery` if `ready`.
    Refuse { error: Bytes, ready: bool },
    /// Airlock's own message (a notice), written at its turn.
    Local(Bytes),
}

/// How a forwarded batch went, for completing its grants.
#[derive(Debug, Default)]
struct Report {
    error: Option<String>,
    /// Rows returned to the client.
    rows: u64,
    /// The server's command tags (`DELETE 3`): what a write did, which
    /// returns no rows.
    commands: Vec<String>,
    dlp: BTreeMap<String, u64>,
}

/// The most command tags a grant's completion keeps.
const MAX_TAGS: usize = 64;

/// The client's prepared statements and portals, each under a name of the
/// proxy's choosing on the server (`al<n>`, never reused). The client's
/// names never reach the server: a message the server skipped after an
/// error (a `Close`, a re-`Parse`) cannot leave the proxy deciding one
/// statement while the server runs another under the same name, since
/// every `Parse` makes a new server name and a name the proxy does not
/// know is refused.
#[derive(Clone, Default)]
struct Names {
    /// Client statement name → server name and what it is.
    statements: HashMap<String, (String, Classified)>,
    /// Client portal name → server name, what its statement was when
    /// bound, the bound values and the result formats.
    portals: HashMap<String, Portal>,
    next: u64,
}

type Classified = Result<Arc<Vec<Statement>>, classify::Refusal>;

#[derive(Clone)]
struct Portal {
    server: String,
    statement: String,
    classified: Classified,
    values: Vec<Value>,
    formats: Vec<i16>,
}

/// The most statements and portals one session may hold.
const MAX_NAMES: usize = 10_000;
/// The most messages and bytes one batch (up to `Sync`) may hold.
const MAX_BATCH_FRAMES: usize = 10_000;
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

impl Names {
    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("al{}", self.next)
    }
}

async fn relay(
    shared: &Arc<Shared>,
    client: LoggedIn,
    up: Box<dyn Io>,
    up_buf: BytesMut,
    cancel: Arc<Notify>,
    peer: SocketAddr,
) -> Result<(), SessionError> {
    let LoggedIn {
        io,
        mut buf,
        user,
        key,
        ..
    } = client;
    let mut key_checked = tokio::time::Instant::now();
    let (mut client_rd, client_wr) = tokio::io::split(io);
    let (up_rd, mut up_wr) = tokio::io::split(up);
    let (tx, rx) = mpsc::unbounded_channel::<Cmd>();
    let status = Arc::new(AtomicU8::new(b'I'));
    let writer = tokio::spawn(write_replies(
        shared.clone(),
        client_wr,
        up_rd,
        up_buf,
        rx,
        status.clone(),
    ));
    let mut names = Names::default();
    let mut batch: Vec<Frame> = Vec::new();
    let mut batch_bytes = 0usize;
    // After a refusal at `Flush`, the server-side batch is over; the
    // client's messages up to its `Sync` are skipped, as PostgreSQL would.
    let mut skipping = false;
    let result = loop {
        let f = match read_frame(&mut client_rd, &mut buf, codec::MAX_FRAME).await {
            Ok(Some(f)) => f,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        if skipping {
            if f.tag == b'S' {
                skipping = false;
                let ready = build::ready(status.load(Ordering::Relaxed));
                let _ = tx.send(Cmd::Local(ready));
            }
            continue;
        }
        let session = Session {
            principal: &user,
            in_transaction: status.load(Ordering::Relaxed) != b'I',
            source_ip: Some(peer.ip()),
        };
        match f.tag {
            b'Q' => {
                if let Err(e) = still_live(shared, &tx, &user, &key, &mut key_checked).await {
                    break Err(e);
                }
                // Not `?`: a session ends through the cleanup below, or the
                // upstream connection outlives it (a query that was not
                // UTF-8 left one open, idle, for good).
                let sql = match codec::query(f.body()) {
                    Ok(sql) => sql,
                    Err(e) => break Err(e.into()),
                };
                let mut plan = Plan::default();
                let outcome = match classify_statement(&sql, &user).await {
                    Err(classify::Refusal::Empty) => Outcome::unchecked(),
                    Err(r) => refusal_of(&r),
                    Ok(statements) => {
                        let mut checks = Vec::new();
                        let mut bad = None;
                        for st in &statements {
                            match statement_checks(shared, &session, st, &[], &mut plan) {
                                Ok(c) => checks.extend(c),
                                Err(e) => bad = Some(e),
                            }
                        }
                        match bad {
                            Some(e) => Outcome::Refused {
                                code: "42602",
                                message: e,
                            },
                            None => {
                                let ends = Ends {
                                    cancel: &cancel,
                                    client: &mut client_rd,
                                    buf: &mut buf,
                                };
                                decide(shared, &tx, (&user, &key), checks, ends).await
                            }
                        }
                    }
                };
                if let Err(e) =
                    send(shared, &tx, &mut up_wr, outcome, plan, vec![f.raw], true).await
                {
                    break Err(e);
                }
            }
            // COPY data sent in a batch, before its Sync, joins it: after
            // the batch's COPY, in order, once it is decided (written at
            // once, it reached the server before the statement, which then
            // waited for data that had come and gone: a black-box pass
            // found the session hung).
            b'P' | b'B' | b'D' | b'E' | b'C' | b'd' | b'c' | b'f'
                if matches!(f.tag, b'P' | b'B' | b'D' | b'E' | b'C') || !batch.is_empty() =>
            {
                batch_bytes += f.raw.len();
                batch.push(f);
                if batch.len() > MAX_BATCH_FRAMES || batch_bytes > MAX_BATCH_BYTES {
                    let _ = tx.send(Cmd::Local(build::fatal(
                        "54000",
                        "too many messages before Sync for Airlock's proxy",
                    )));
                    break Err(SessionError::Refused("batch too large".into()));
                }
            }
            b'S' | b'H' => {
                if let Err(e) = still_live(shared, &tx, &user, &key, &mut key_checked).await {
                    break Err(e);
                }
                let sync = f.tag == b'S';
                let mut next = names.clone();
                let ends = Ends {
                    cancel: &cancel,
                    client: &mut client_rd,
                    buf: &mut buf,
                };
                let decided =
                    decide_batch(shared, &tx, &session, &key, &mut next, &batch, sync, ends).await;
                let (outcome, plan, mut frames) = match decided {
                    Ok(x) => x,
                    Err(e) => break Err(e),
                };
                batch.clear();
                batch_bytes = 0;
                frames.push(f.raw);
                let refused = matches!(outcome, Outcome::Refused { .. });
                if refused {
                    skipping = !sync;
                } else {
                    names = next;
                }
                if let Err(e) = send(shared, &tx, &mut up_wr, outcome, plan, frames, sync).await {
                    break Err(e);
                }
            }
            // COPY data from the client: its statement was decided.
            b'd' | b'c' | b'f' => {
                if let Err(e) = up_wr.write_all(&f.raw).await {
                    break Err(e.into());
                }
            }
            b'X' => {
                let _ = up_wr.write_all(&f.raw).await;
                break Ok(());
            }
            b'F' => {
                // The function-call sub-protocol calls any function by OID,
                // past every statement decision.
                let outcome = Outcome::Refused {
                    code: "0A000",
                    message: "the function-call protocol is not served by Airlock's proxy".into(),
                };
                if let Err(e) = send(
                    shared,
                    &tx,
                    &mut up_wr,
                    outcome,
                    Plan::default(),
                    Vec::new(),
                    true,
                )
                .await
                {
                    break Err(e);
                }
            }
            other => {
                break Err(SessionError::Refused(format!(
                    "unexpected message type {:?}",
                    other as char
                )))
            }
        }
        if let Err(e) = up_wr.flush().await {
            break Err(e.into());
        }
    };
    let _ = up_wr.shutdown().await;
    drop(tx);
    let _ = writer.await;
    result
}

/// Classifies `sql`: at once when short; a long one on the blocking pool,
/// one at a time, and one per user at a time. A long statement costs up to
/// about a second of a core to parse (1 MiB of list items; deeper ones are
/// refused from their tokens first), so a user who sends them from many
/// sessions queues behind their own: the shared queue holds at most one
/// statement per user, and another user's long statement waits for at
/// most one parse per user ahead of it (one user's sessions kept the
/// others' long statements refused; found by a black-box pass). Never on
/// the node's async workers (the API, the console, other sessions).
async fn classify_statement(
    sql: &str,
    user: &UserName,
) -> Result<Vec<classify::Statement>, classify::Refusal> {
    /// How long a long statement waits for its turn.
    const LONG_WAIT: Duration = Duration::from_secs(10);
    if !classify::may_take_long(sql) {
        return classify::classify(sql);
    }
    classify_long(sql.to_owned(), user, LONG_WAIT).await
}

/// The queue of long statements: each user's own turn first, then the
/// shared one, both within `wait` in all.
async fn classify_long(
    sql: String,
    user: &UserName,
    wait: Duration,
) -> Result<Vec<classify::Statement>, classify::Refusal> {
    use std::collections::BTreeMap;
    use tokio::sync::Semaphore;
    static SHARED: Semaphore = Semaphore::const_new(1);
    static USERS: std::sync::Mutex<BTreeMap<String, Arc<Semaphore>>> =
        std::sync::Mutex::new(BTreeMap::new());
    let busy = || {
        classify::Refusal::NotServed(
            "a long statement while others are being checked (they are checked one at a time; try again)".into(),
        )
    };
    let mine = {
        let Ok(mut users) = USERS.lock() else {
            return Err(busy());
        };
        users
            .entry(user.as_str().to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    };
    // Only the wait for a turn is bounded: a parse once started runs to
    // its end holding both turns, so parses never overlap.
    let turns = tokio::time::timeout(wait, async {
        let own = mine.clone().acquire_owned().await.ok()?;
        let shared = SHARED.acquire().await.ok()?;
        Some((own, shared))
    })
    .await
    .ok()
    .flatten();
    let outcome = match turns {
        // The turns go with the parse, not with this future: a session
        // that ends meanwhile does not free them while the parse runs.
        Some(turns) => tokio::task::spawn_blocking(move || {
            let _turns = turns;
            classify::classify(&sql)
        })
        .await
        .unwrap_or_else(|_| Err(classify::Refusal::Unparseable("the parser failed".into()))),
        None => Err(busy()),
    };
    // The user's entry goes once no one else holds it.
    drop(mine);
    if let Ok(mut users) = USERS.lock() {
        if users
            .get(user.as_str())
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            users.remove(user.as_str());
        }
    }
    outcome
}

fn refusal_of(r: &classify::Refusal) -> Outcome {
    let code = match r {
        classify::Refusal::Unparseable(_) => "42601",
        classify::Refusal::SearchPath => "42501",
        classify::Refusal::NotServed(_) => "0A000",
        classify::Refusal::Empty => "42601",
    };
    Outcome::Refused {
        code,
        message: r.to_string(),
    }
}

/// Decides an extended-protocol batch: every `Execute` in it, with its
/// bound values, against what its portal's statement was when it was bound
/// (the batch is replayed in order on `names`). Statement and portal names
/// are rewritten to the server's (see [`Names`]); a name the proxy does
/// not know, or text Airlock cannot read, refuses the batch. Returns the
/// outcome, the plan for the writer and the frames to send.
#[allow(clippy::too_many_arguments)]
async fn decide_batch(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Cmd>,
    session: &Session<'_>,
    key: &str,
    names: &mut Names,
    batch: &[Frame],
    sync: bool,
    ends: Ends<'_, impl AsyncRead + Unpin + Send>,
) -> Result<(Outcome, Plan, Vec<Bytes>), SessionError> {
    let mut checks = Vec::new();
    let mut plan = Plan::default();
    let mut out: Vec<Bytes> = Vec::with_capacity(batch.len() + 1);
    let refuse = |code: &'static str, message: String, plan: Plan| {
        Ok((Outcome::Refused { code, message }, plan, Vec::new()))
    };
    for f in batch {
        match f.tag {
            b'P' => {
                let p = codec::parse(f.body())?;
                let classified = classify_statement(&p.sql, session.principal)
                    .await
                    .map(Arc::new);
                match &classified {
                    Err(classify::Refusal::Empty) | Ok(_) => {}
                    Err(r) => return Ok((refusal_of(r), plan, Vec::new())),
                }
                if !p.name.is_empty() && names.statements.contains_key(&p.name) {
                    let m = format!("prepared statement \"{}\" already exists", p.name);
                    return refuse("42P05", m, plan);
                }
                if names.statements.len() >= MAX_NAMES {
                    return refuse(
                        "54000",
                        "too many prepared statements in this session".into(),
                        plan,
                    );
                }
                let server = names.fresh();
                if let Some((old, _)) = names
                    .statements
                    .insert(p.name.clone(), (server.clone(), classified))
                {
                    // The unnamed statement replaced: its server copy goes.
                    out.push(codec::build::close(b'S', &old));
                    plan.simple.push(true);
                }
                out.push(codec::build::rename(b'P', &server, f.body(), 1)?);
                plan.simple.push(false);
            }
            b'B' => {
                let b = codec::bind(f.body())?;
                let Some((server_stmt, classified)) = names.statements.get(&b.statement).cloned()
                else {
                    let m = format!("prepared statement \"{}\" does not exist", b.statement);
                    return refuse("26000", m, plan);
                };
                if !b.portal.is_empty() && names.portals.contains_key(&b.portal) {
                    return refuse(
                        "42P03",
                        format!("portal \"{}\" already exists", b.portal),
                        plan,
                    );
                }
                if names.portals.len() >= MAX_NAMES {
                    return refuse("54000", "too many portals in this session".into(), plan);
                }
                let values = b
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| decide::parameter(v.as_deref(), b.format(i)))
                    .collect();
                let server = names.fresh();
                let portal = Portal {
                    server: server.clone(),
                    statement: server_stmt.clone(),
                    classified,
                    values,
                    formats: b.result_formats.clone(),
                };
                if let Some(old) = names.portals.insert(b.portal.clone(), portal) {
                    out.push(codec::build::close(b'P', &old.server));
                    plan.simple.push(true);
                }
                out.push(codec::build::bind_renamed(&server, &server_stmt, f.body())?);
                plan.simple.push(false);
            }
            b'C' | b'D' => {
                let what = if f.tag == b'C' { "Close" } else { "Describe" };
                let (kind, name) = codec::target(f.body(), what)?;
                let server = if kind == b'S' {
                    names.statements.get(&name).map(|(s, _)| s.clone())
                } else {
                    names.portals.get(&name).map(|p| p.server.clone())
                };
                let server = match (server, f.tag) {
                    (Some(s), _) => s,
                    // Closing what does not exist is no error in
                    // PostgreSQL: a name never used says so.
                    (None, b'C') => "al0".to_owned(),
                    (None, _) if kind == b'S' => {
                        return refuse(
                            "26000",
                            format!("prepared statement \"{name}\" does not exist"),
                            plan,
                        )
                    }
                    (None, _) => {
                        return refuse("34000", format!("portal \"{name}\" does not exist"), plan)
                    }
                };
                if f.tag == b'C' {
                    if kind == b'S' {
                        names.statements.remove(&name);
                    } else {
                        names.portals.remove(&name);
                    }
                } else if kind == b'S' {
                    plan.describes.push(server.clone());
                } else {
                    plan.portal_describes.push(server.clone());
                }
                if f.tag == b'C' {
                    out.push(codec::build::close(kind, &server));
                    plan.simple.push(false);
                } else {
                    out.push(codec::build::describe(kind, &server));
                }
            }
            b'E' => {
                let portal = codec::execute(f.body())?;
                let Some(p) = names.portals.get(&portal).cloned() else {
                    return refuse("34000", format!("portal \"{portal}\" does not exist"), plan);
                };
                plan.executes
                    .push((p.server.clone(), p.statement.clone(), p.formats.clone()));
                let statements = match &p.classified {
                    Ok(s) => s.clone(),
                    Err(classify::Refusal::Empty) => Arc::new(Vec::new()),
                    Err(r) => return Ok((refusal_of(r), plan, Vec::new())),
                };
                for st in statements.iter() {
                    match statement_checks(shared, session, st, &p.values, &mut plan) {
                        Ok(c) => checks.extend(c),
                        Err(e) => return refuse("42602", e, plan),
                    }
                }
                out.push(codec::build::rename(b'E', &p.server, f.body(), 1)?);
            }
            _ => out.push(f.raw.clone()),
        }
    }
    if !sync && !plan.executes.is_empty() && shared.result_action.is_some() {
        // Results are decided as a batch's replies come back, which the
        // writer matches to batches by their `ReadyForQuery`; a `Flush`
        // has none.
        let m = "with result decisions, Airlock runs statements at Sync, not Flush".into();
        return refuse("0A000", m, plan);
    }
    if checks.is_empty() {
        return Ok((Outcome::unchecked(), plan, out));
    }
    Ok((
        decide(shared, tx, (session.principal, key), checks, ends).await,
        plan,
        out,
    ))
}

/// How often an open session's key is checked again.
const KEY_RECHECK: Duration = Duration::from_secs(2);

/// Ends the session if the key it logged in with was revoked or expired
/// (or its user removed) since: checked again before a statement at most
/// every [`KEY_RECHECK`]. A key that cannot be checked ends it too.
async fn still_live(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Cmd>,
    user: &UserName,
    key: &str,
    checked: &mut tokio::time::Instant,
) -> Result<(), SessionError> {
    if checked.elapsed() < KEY_RECHECK {
        return Ok(());
    }
    match key_live(shared, user, key).await {
        Ok(true) => {
            *checked = tokio::time::Instant::now();
            Ok(())
        }
        outcome => {
            let why = match outcome {
                Err(e) => {
                    format!("Airlock could not check this session's key ({e}); the session ends")
                }
                Ok(_) => format!("the key {key} was revoked or expired; the session ends"),
            };
            let _ = tx.send(Cmd::Local(build::fatal("28000", &why)));
            Err(SessionError::Refused(why))
        }
    }
}

/// Whether `key` is still `user`'s, as the server says now.
async fn key_live(
    shared: &Shared,
    user: &UserName,
    key: &str,
) -> Result<bool, airlock_client::ClientError> {
    let body = airlock_api::KeyLiveBody {
        user: user.clone(),
        key: key.to_owned(),
    };
    let answer = shared.decider.enforcer().gate().key_live(&body).await?;
    Ok(answer.live)
}

/// A statement's checks; with `result_action`, the checks on its results
/// go into the plan.
fn statement_checks(
    shared: &Shared,
    session: &Session<'_>,
    st: &Statement,
    values: &[Value],
    plan: &mut Plan,
) -> Result<Vec<airlock_api::CheckBody>, String> {
    let checks = shared.decider.checks(session, st, values)?;
    if let (Some(action), true) = (&shared.result_action, st.returns_rows) {
        for c in &checks {
            let mut r = c.clone();
            r.action = action.clone();
            if !plan
                .result_checks
                .iter()
                .any(|x| x.resource == r.resource && x.params == r.params)
            {
                plan.result_checks.push(r);
            }
        }
    }
    Ok(checks)
}

/// What ends a hold before its decision: a cancel request, or the client
/// leaving. The client is read while it waits, so that its leaving is
/// seen; what it sends meanwhile is kept in `buf` for after the hold.
struct Ends<'a, R> {
    cancel: &'a Notify,
    client: &'a mut R,
    buf: &'a mut BytesMut,
}

/// How much a held client's messages are read ahead; past it the hold no
/// longer notices the client leaving (it ends at its decision, as before).
const READ_AHEAD: usize = 1 << 20;

/// Resolves once the client has left: closed its connection, sent
/// Terminate (which it may send without closing; a black-box pass found the
/// statement then ran), or reading it failed. What it sends before is read
/// into `buf`.
async fn client_gone(client: &mut (impl AsyncRead + Unpin + Send), buf: &mut BytesMut) {
    let mut at = 0;
    loop {
        if codec::says_goodbye(buf, &mut at) {
            return;
        }
        if buf.len() >= READ_AHEAD {
            return std::future::pending().await;
        }
        // Cancel-safe: a read the decision interrupts took nothing.
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Decides, telling the client about holds at once; a cancel request from
/// the client ends a hold, as does the client leaving: a statement
/// approved after its client left would run with no one to answer (its
/// results, or its error, lost), so it does not, and the request stays
/// open for a retry with its grant unspent.
async fn decide(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Cmd>,
    (user, key): (&UserName, &str),
    checks: Vec<airlock_api::CheckBody>,
    ends: Ends<'_, impl AsyncRead + Unpin + Send>,
) -> Outcome {
    let hold = shared.hold.as_secs();
    let mut held = false;
    let mut notice = |v: &airlock_api::RequestView| {
        held = true;
        let _ = tx.send(Cmd::Local(build::notice(&hold_notice(v, hold))));
    };
    // Watched only while the decision waits (the decider polls it there):
    // an allowed statement is not refused for a client that closes right
    // after sending it, and a leave never interrupts a grant's consumption.
    let Ends {
        cancel,
        client,
        buf,
    } = ends;
    let stop = std::pin::pin!(async move {
        tokio::select! {
            () = cancel.notified() => Outcome::Refused {
                code: "57014",
                message: "canceling statement due to user request (the hold ended; the request stays open)".into(),
            },
            () = client_gone(client, buf) => Outcome::Refused {
                code: "08006",
                message: "the client left while the statement was held; it did not run (the request stays open)".into(),
            },
        }
    });
    let outcome = shared.decider.decide(checks, &mut notice, stop).await;
    // Approved after a wait: run only for a key still good (it was checked
    // before the hold; it may have been revoked meanwhile). The grant is
    // spent by then, so it is completed as a failure.
    if let Outcome::Pass { grants, .. } = &outcome {
        if held && !grants.is_empty() {
            // Fails closed: an answer that cannot be had runs nothing.
            if !key_live(shared, user, key).await.unwrap_or(false) {
                complete(shared, grants.clone(), None).await;
                return Outcome::Refused {
                    code: "28000",
                    message: "the key was revoked or could not be checked while the statement was held; it did not run".into(),
                };
            }
        }
    }
    outcome
}

/// Sends what passed (and queues its reply), or refuses in its place.
async fn send(
    shared: &Arc<Shared>,
    tx: &mpsc::UnboundedSender<Cmd>,
    up: &mut (impl AsyncWrite + Unpin),
    outcome: Outcome,
    plan: Plan,
    frames: Vec<Bytes>,
    expects_ready: bool,
) -> Result<(), SessionError> {
    let closed = || SessionError::Refused("the session's writer stopped".into());
    match outcome {
        Outcome::Pass { grants, decided } => {
            // The decider names a principal only when rows are scanned.
            let findings = (grants.is_empty() && decided.principal.is_some()).then_some(decided);
            let report = if grants.is_empty() || !expects_ready {
                None
            } else {
                let (rtx, rrx) = oneshot::channel();
                let shared = shared.clone();
                tokio::spawn(async move {
                    let report = rrx.await.ok();
                    complete(&shared, grants, report).await;
                });
                Some(rtx)
            };
            let pass = Cmd::Pass {
                report,
                findings,
                plan,
                ready: expects_ready,
                planned: false,
            };
            tx.send(pass).map_err(|_| closed())?;
            for f in frames {
                up.write_all(&f).await?;
            }
        }
        Outcome::Refused { code, message } => {
            let error = build::error(code, &message);
            tx.send(Cmd::Refuse {
                error,
                ready: expects_ready,
            })
            .map_err(|_| closed())?;
            up.write_all(&build::sync()).await?;
        }
    }
    Ok(())
}

/// Puts what DLP found in the replies to allowed statements on record, on
/// a task of its own (a granted one's counts go with its completion). The
/// rows have left by the time the counts are known (masked, under `mask`),
/// so a failure is logged.
fn record_findings(shared: &Arc<Shared>, decided: Decided, counts: BTreeMap<String, u64>) {
    let Some(principal) = decided.principal else {
        return;
    };
    if counts.is_empty() {
        return;
    }
    let disposition = match shared.rules.mode {
        RowsDlp::Mask => Disposition::Masked,
        RowsDlp::Block => Disposition::Withheld,
        RowsDlp::Report | RowsDlp::Off => Disposition::Passed,
    };
    let body = FindingsBody {
        principal,
        proxy: shared.name.clone(),
        targets: decided.targets,
        decisions: decided.decisions,
        disposition,
        counts,
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = shared
            .decider
            .enforcer()
            .gate()
            .report_findings(&body)
            .await
        {
            tracing::error!(proxy = %shared.name, error = %e, "cannot record the DLP findings of a result");
        }
    });
}

/// What the writer holds between `ReadyForQuery`s that must not be lost
/// when it stops: the commands whose replies are due, how the current
/// batch is going, and what the passes whose replies have flowed were
/// decided as.
#[derive(Default)]
struct Leaving {
    queue: VecDeque<Cmd>,
    report: Report,
    seen: Decided,
}

impl Leaving {
    /// The writer stopped (the client or the server went away, or an
    /// error): what DLP found in replies that already left still goes on
    /// record, under the passes still queued (one of them was in flight).
    fn settle(mut self, shared: &Arc<Shared>) {
        for c in self.queue.drain(..) {
            if let Cmd::Pass {
                findings: Some(d), ..
            } = c
            {
                self.seen.merge(d);
            }
        }
        record_findings(shared, self.seen, self.report.dlp);
    }
}

/// Takes `part`'s counts out of `total`: findings on record elsewhere (a
/// result's own decision or completion).
fn subtract(total: &mut BTreeMap<String, u64>, part: &BTreeMap<String, u64>) {
    for (k, n) in part {
        if let Some(t) = total.get_mut(k) {
            *t = t.saturating_sub(*n);
            if *t == 0 {
                total.remove(k);
            }
        }
    }
}

/// Reports each consumed grant's use once the statement ran.
async fn complete(shared: &Shared, grants: Vec<GrantId>, report: Option<Report>) {
    let (outcome, detail) = match report {
        Some(r) => {
            let mut d = Map::new();
            d.insert("released_to".into(), json!("postgres"));
            d.insert("rows".into(), json!(r.rows));
            if !r.commands.is_empty() {
                d.insert("commands".into(), json!(r.commands));
            }
            if !r.dlp.is_empty() {
                d.insert("dlp".into(), json!(r.dlp));
            }
            match r.error {
                Some(e) => {
                    d.insert("error".into(), json!(e));
                    (GrantOutcome::Failure, d)
                }
                None => (GrantOutcome::Success, d),
            }
        }
        None => {
            let mut d = Map::new();
            d.insert(
                "error".into(),
                json!("the session ended before the statement finished"),
            );
            (GrantOutcome::Failure, d)
        }
    };
    for g in grants {
        if let Err(e) = shared
            .decider
            .enforcer()
            .complete(g, outcome, detail.clone())
            .await
        {
            if e.code() != Some(ErrorCode::WrongState) {
                tracing::warn!(grant = %g, error = %e, "could not complete a grant");
            }
        }
    }
}

/// Relays the server's replies to the client, in order with Airlock's own;
/// when it stops, for whatever reason, what DLP found in what left is put
/// on record.
async fn write_replies(
    shared: Arc<Shared>,
    client: impl AsyncWrite + Unpin,
    up: impl AsyncRead + Unpin,
    buf: BytesMut,
    rx: mpsc::UnboundedReceiver<Cmd>,
    status: Arc<AtomicU8>,
) -> Result<(), SessionError> {
    let mut leaving = Leaving::default();
    let ended = relay_replies(&shared, client, up, buf, rx, status, &mut leaving).await;
    leaving.settle(&shared);
    ended
}

async fn relay_replies(
    shared: &Arc<Shared>,
    mut client: impl AsyncWrite + Unpin,
    mut up: impl AsyncRead + Unpin,
    mut buf: BytesMut,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    status: Arc<AtomicU8>,
    leaving: &mut Leaving,
) -> Result<(), SessionError> {
    let Leaving {
        queue,
        report,
        seen,
    } = leaving;
    let mut results = Results::new(shared.rules.clone());
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut open = true;
    // The plan of the batch whose replies are coming (the first `Pass` in
    // the queue); taken when that batch's replies begin.
    let mut planned = false;
    let mut chain_open = false;
    loop {
        while let Some(Cmd::Local(_)) = queue.front() {
            if let Some(Cmd::Local(m)) = queue.pop_front() {
                out.extend_from_slice(&m);
            }
        }
        if !out.is_empty() {
            client.write_all(&out).await?;
            client.flush().await?;
            out.clear();
        }
        tokio::select! {
            cmd = rx.recv(), if open => match cmd {
                Some(c) => queue.push_back(c),
                None => open = false,
            },
            n = up.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
                while let Some(f) = codec::frame(&mut buf)? {
                    while let Ok(c) = rx.try_recv() {
                        queue.push_back(c);
                    }
                    // Replies to a forwarded batch always find its command
                    // queued (it is sent before the batch); with none, this
                    // is an asynchronous message (a notification) and plans
                    // nothing. Batches sent after a `Flush` continue the
                    // same stream: their plans are added as they come.
                    if !planned || chain_open {
                        let mut found = false;
                        for c in queue.iter_mut() {
                            match c {
                                Cmd::Pass { plan, ready, planned: done, .. } if !*done => {
                                    *done = true;
                                    let plan = std::mem::take(plan);
                                    if planned {
                                        results.extend(plan);
                                    } else {
                                        results.begin(plan);
                                        planned = true;
                                    }
                                    found = true;
                                    chain_open = !*ready;
                                    if *ready {
                                        break;
                                    }
                                }
                                Cmd::Refuse { .. } if !planned => {
                                    results.begin(Plan::default());
                                    planned = true;
                                    found = true;
                                    chain_open = false;
                                    break;
                                }
                                Cmd::Refuse { .. } => {
                                    chain_open = false;
                                    break;
                                }
                                _ => {}
                            }
                        }
                        let _ = found;
                    }
                    match f.tag {
                        b'Z' => {
                            planned = false;
                            let s = codec::ready_status(&f.body())?;
                            status.store(s, Ordering::Relaxed);
                            while let Ok(c) = rx.try_recv() {
                                queue.push_back(c);
                            }
                            // Passes of `Flush` batches end with this
                            // `ReadyForQuery` too: what was found in their
                            // replies counts with it.
                            while matches!(
                                queue.front(),
                                Some(Cmd::Pass { ready: false, .. }) | Some(Cmd::Local(_))
                            ) {
                                match queue.pop_front() {
                                    Some(Cmd::Local(m)) => out.extend_from_slice(&m),
                                    Some(Cmd::Pass { findings: Some(d), .. }) => seen.merge(d),
                                    _ => {}
                                }
                            }
                            chain_open = false;
                            let mut completes = None;
                            match queue.pop_front() {
                                Some(Cmd::Pass { report: tx, findings, .. }) => {
                                    out.extend_from_slice(&f.raw);
                                    if let Some(d) = findings {
                                        seen.merge(d);
                                    }
                                    completes = tx;
                                }
                                Some(Cmd::Refuse { error, ready }) => {
                                    out.extend_from_slice(&error);
                                    if ready {
                                        out.extend_from_slice(&f.raw);
                                    }
                                }
                                Some(Cmd::Local(m)) => {
                                    // Not reachable: locals are written as
                                    // soon as they reach the front.
                                    out.extend_from_slice(&m);
                                    out.extend_from_slice(&f.raw);
                                }
                                None => out.extend_from_slice(&f.raw),
                            }
                            let r = std::mem::take(report);
                            let decided = std::mem::take(seen);
                            match completes {
                                // The grants' completion carries the counts.
                                Some(tx) => {
                                    let _ = tx.send(r);
                                }
                                None => record_findings(shared, decided, r.dlp),
                            }
                            while let Some(Cmd::Local(_)) = queue.front() {
                                if let Some(Cmd::Local(m)) = queue.pop_front() {
                                    out.extend_from_slice(&m);
                                }
                            }
                        }
                        b'E' => {
                            let fields = codec::fields(f.body()).unwrap_or_default();
                            report.error = fields
                                .iter()
                                .find(|(c, _)| *c == b'M')
                                .map(|(_, m)| results.for_the_record(m));
                            // Rows held for a decision never leave after an
                            // error.
                            results.held = None;
                            results.end_result();
                            out.extend_from_slice(&results.scrub_message(f, &mut report.dlp));
                        }
                        b'N' | b'A' => {
                            out.extend_from_slice(&results.scrub_message(f, &mut report.dlp));
                        }
                        b'1' | b'2' | b'3' => {
                            if !results.added_reply() {
                                out.extend_from_slice(&f.raw);
                            }
                        }
                        b't' => {
                            results.parameter_description();
                            out.extend_from_slice(&f.raw);
                        }
                        b'T' => {
                            results.describe(Some(f.body()));
                            out.extend_from_slice(&f.raw);
                        }
                        b'n' => {
                            results.describe(None);
                            out.extend_from_slice(&f.raw);
                        }
                        b'S' => {
                            // A setting Airlock pinned, changed anyway (a
                            // function, a role default): end the session
                            // rather than parse text the server reads
                            // differently.
                            let body = f.body();
                            let (name, value) = parameter_status(&body);
                            if moves_pinned(name, &value) {
                                out.extend_from_slice(&build::fatal(
                                    "55000",
                                    "a setting Airlock's proxy pins was changed; the session ends",
                                ));
                                client.write_all(&out).await?;
                                client.flush().await?;
                                return Err(SessionError::Refused("pinned setting changed".into()));
                            }
                            out.extend_from_slice(&f.raw);
                        }
                        b'D' => {
                            report.rows += 1;
                            match results.row(f, &mut report.dlp) {
                                RowOut::Send(frame) if results.decided() => {
                                    if let Some(stop) = results.hold(frame) {
                                        out.extend_from_slice(&stop);
                                    }
                                }
                                RowOut::Send(frame) => out.extend_from_slice(&frame),
                                RowOut::Stop(error) => {
                                    // Whatever was held for a decision goes
                                    // nowhere once the result is cut.
                                    results.held = None;
                                    out.extend_from_slice(&error);
                                }
                                RowOut::Drop => {}
                            }
                        }
                        b'H' => {
                            results.copy_out(&f);
                            out.extend_from_slice(&f.raw);
                        }
                        b'd' => match results.copy_data(f, &mut report.dlp) {
                            RowOut::Send(frame) | RowOut::Stop(frame) => out.extend_from_slice(&frame),
                            RowOut::Drop => {}
                        },
                        b'C' | b'I' | b's' => {
                            if f.tag == b'C' && report.commands.len() < MAX_TAGS {
                                let body = f.body();
                                let tag = body.split(|b| *b == 0).next().unwrap_or_default();
                                report.commands.push(String::from_utf8_lossy(tag).into_owned());
                            }
                            if let Some(held) = results.held.take() {
                                // Decided whole before any of it leaves.
                                if !out.is_empty() {
                                    client.write_all(&out).await?;
                                    client.flush().await?;
                                    out.clear();
                                }
                                let checks = results.result_checks(&held);
                                match decide_result(shared, checks, &mut client).await? {
                                    Outcome::Pass { grants, .. } => {
                                        for frame in &held.frames {
                                            out.extend_from_slice(frame);
                                        }
                                        out.extend_from_slice(&f.raw);
                                        if !grants.is_empty() {
                                            // On record with the result's
                                            // grant.
                                            subtract(&mut report.dlp, &held.dlp);
                                            let shared = shared.clone();
                                            let r = Report {
                                                error: None,
                                                rows: held.rows,
                                                commands: Vec::new(),
                                                dlp: held.dlp.clone(),
                                            };
                                            tokio::spawn(async move { complete(&shared, grants, Some(r)).await });
                                        }
                                    }
                                    Outcome::Refused { code, message } => {
                                        // Withheld: the result's decision
                                        // holds its counts.
                                        subtract(&mut report.dlp, &held.dlp);
                                        out.extend_from_slice(&build::error(code, &message));
                                    }
                                }
                            } else if !results.stopped() {
                                out.extend_from_slice(&f.raw);
                            }
                            results.end_result_of(f.tag == b's');
                        }
                        _ => out.extend_from_slice(&f.raw),
                    }
                    if out.len() > 64 * 1024 {
                        client.write_all(&out).await?;
                        out.clear();
                    }
                }
            }
        }
    }
}

/// Decides a held result, passing hold notices to the client as they come.
async fn decide_result(
    shared: &Shared,
    checks: Vec<airlock_api::CheckBody>,
    client: &mut (impl AsyncWrite + Unpin),
) -> Result<Outcome, SessionError> {
    let (ntx, mut nrx) = mpsc::unbounded_channel::<Bytes>();
    let hold = shared.hold.as_secs();
    let mut notice = |v: &airlock_api::RequestView| {
        let _ = ntx.send(build::notice(&hold_notice(v, hold)));
    };
    let never = std::pin::pin!(std::future::pending());
    let decided = shared.decider.decide(checks, &mut notice, never);
    tokio::pin!(decided);
    loop {
        tokio::select! {
            o = &mut decided => return Ok(o),
            Some(m) = nrx.recv() => {
                client.write_all(&m).await?;
                client.flush().await?;
            }
        }
    }
}

/// The NOTICE sent at once when something is held.
fn hold_notice(v: &airlock_api::RequestView, hold: u64) -> String {
    format!(
        "Airlock: {} on {}:{} needs approval: request {} {} (waiting up to {hold}s)",
        v.action, v.resource.kind, v.resource.id, v.id, v.url
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One user's long statements queue behind each other, not in front
    /// of another user's: with many of alice's waiting, bob's is checked
    /// after at most the one of hers being parsed (found by a black-box
    /// pass: they kept bob's refused).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_statements_queue_per_user() {
        let alice = UserName::parse("alice").unwrap();
        let bob = UserName::parse("bob").unwrap();
        let ids: Vec<String> = (0..30_000).map(|i| format!("'n{i}'")).collect();
        let list = format!("select id from t where name in ({})", ids.join(","));
        // What one parse takes here, so that the waits below are counted
        // in parses, whatever the machine.
        let started = std::time::Instant::now();
        assert!(classify::classify(&list).is_ok());
        let one = started.elapsed();
        let hers: Vec<_> = (0..20)
            .map(|_| {
                let (list, alice) = (list.clone(), alice.clone());
                tokio::spawn(async move { classify_long(list, &alice, one * 100).await })
            })
            .collect();
        tokio::time::sleep(one / 4).await;
        // Bob waits for the one of hers being parsed, not for twenty:
        // given four parses' time, his is served.
        let his = classify_long(list.clone(), &bob, one * 4).await;
        assert!(his.is_ok(), "{his:?}");
        for h in hers {
            h.abort();
        }
    }
}
