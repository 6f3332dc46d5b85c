//! PostgreSQL protocol 3 messages, with no I/O: frames cut from a buffer,
//! the few messages the proxy reads parsed into views, and the ones it
//! writes built. Everything else passes through as the raw frame it came
//! in. Input is never trusted: lengths are checked before use, nothing
//! panics, and a frame larger than the limit is an error, not an
//! allocation.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why bytes are not a PostgreSQL message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A length below the header's own or above the limit.
    #[error("message length {0} is out of range")]
    Length(i64),
    /// A message whose body does not hold what its type says.
    #[error("malformed {0} message")]
    Malformed(&'static str),
    /// A startup packet with a protocol Airlock does not speak.
    #[error("unsupported protocol version {0}.{1}")]
    Version(u16, u16),
}

/// The largest frame accepted from either side (PostgreSQL's own limit on
/// most messages is 1 GB; statements and rows larger than this are not
/// something a proxy should buffer).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// The largest message before sign-in (PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`):
/// whoever has no key yet cannot make the proxy hold 64 MiB per connection
/// (a black-box pass grew it by 300 MB per connection so).
pub const MAX_AUTH: usize = 65_535;
/// The largest startup packet (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

/// The first thing a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// Asks for TLS.
    Ssl,
    /// Asks for GSSAPI encryption (always declined).
    GssEnc,
    /// Cancels the query running on another connection.
    Cancel {
        /// That connection's process id, as the client was told.
        pid: i32,
        /// Its secret key.
        secret: i32,
    },
    /// Opens a session.
    Session {
        /// `user`, `database`, `options`, `application_name`, ….
        params: Vec<(String, String)>,
    },
}

impl Startup {
    /// A startup parameter.
    pub fn param(&self, name: &str) -> Option<&str> {
        match self {
            Startup::Session { params } => params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            _ => None,
        }
    }
}

/// Cuts one startup packet (untagged) from `buf`, if it is all there.
pub fn startup(buf: &mut BytesMut) -> Result<Option<Startup>, CodecError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let Ok(len) = usize::try_from(len) else {
        return Err(CodecError::Length(len.into()));
    };
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(CodecError::Length(len as i64));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut body = buf.split_to(len).freeze();
    body.advance(4);
    let code = body.get_i32();
    match code {
        SSL_REQUEST => Ok(Some(Startup::Ssl)),
        GSSENC_REQUEST => Ok(Some(Startup::GssEnc)),
        CANCEL_REQUEST => {
            if body.remaining() < 8 {
                return Err(CodecError::Malformed("CancelRequest"));
            }
            Ok(Some(Startup::Cancel {
                pid: body.get_i32(),
                secret: body.get_i32(),
            }))
        }
        v => {
            let (major, minor) = ((v >> 16) as u16, (v & 0xffff) as u16);
            if major != 3 {
                return Err(CodecError::Version(major, minor));
            }
            let mut params = Vec::new();
            loop {
                let key = cstr(&mut body, "StartupMessage")?;
                if key.is_empty() {
                    break;
                }
                let value = cstr(&mut body, "StartupMessage")?;
                params.push((key, value));
            }
            Ok(Some(Startup::Session { params }))
        }
    }
}

/// One tagged message, whole: `raw` is what goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The type byte.
    pub tag: u8,
    /// Tag, length and body, as received.
    pub raw: Bytes,
}

impl Frame {
    /// The body, after the 5-byte header.
    pub fn body(&self) -> Bytes {
        self.raw.slice(5..)
    }
}

/// Cuts one tagged message from `buf`, if it is all there.
pub fn frame(buf: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
    frame_within(buf, MAX_FRAME)
}

/// [`frame`] for a message of at most `max` bytes (a larger one is a
/// [`CodecError::Length`] as soon as its header is in).
pub fn frame_within(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let Ok(len) = usize::try_from(len) else {
        return Err(CodecError::Length(len.into()));
    };
    if !(4..=max.min(MAX_FRAME)).contains(&len) {
        return Err(CodecError::Length(len as i64));
    }
    if buf.len() < len + 1 {
        // Nothing is reserved for the declared length: a peer that
        // announces 64 MiB and sends 5 bytes costs 5 bytes.
        return Ok(None);
    }
    let raw = buf.split_to(len + 1).freeze();
    Ok(Some(Frame { tag: raw[0], raw }))
}

/// Whether the client messages in `buf` (from a message boundary) say the
/// session is over: a Terminate among the whole messages, or a length no
/// message can have (the session ends on it when it is read). `at` is where
/// the messages not yet looked at begin, kept between calls as `buf` grows,
/// so each byte is looked at once.
pub fn says_goodbye(buf: &[u8], at: &mut usize) -> bool {
    while let Some(head) = buf.get(*at..*at + 5) {
        if head[0] == b'X' {
            return true;
        }
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        match usize::try_from(len) {
            Ok(len) if (4..=MAX_FRAME).contains(&len) => *at += 1 + len,
            _ => return true,
        }
    }
    false
}

fn cstr(b: &mut Bytes, what: &'static str) -> Result<String, CodecError> {
    let end = b
        .iter()
        .position(|c| *c == 0)
        .ok_or(CodecError::Malformed(what))?;
    let s = std::str::from_utf8(&b[..end])
        .map_err(|_| CodecError::Malformed(what))?
        .to_owned();
    b.advance(end + 1);
    Ok(s)
}

fn i16_(b: &mut Bytes, what: &'static str) -> Result<i16, CodecError> {
    if b.remaining() < 2 {
        return Err(CodecError::Malformed(what));
    }
    Ok(b.get_i16())
}

fn i32_(b: &mut Bytes, what: &'static str) -> Result<i32, CodecError> {
    if b.remaining() < 4 {
        return Err(CodecError::Malformed(what));
    }
    Ok(b.get_i32())
}

fn count(n: i16, what: &'static str) -> Result<usize, CodecError> {
    usize::try_from(n).map_err(|_| CodecError::Malformed(what))
}

/// `Parse` ('P').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    /// Prepared statement name ("" = unnamed).
    pub name: String,
    /// The statement's text.
    pub sql: String,
}

/// Reads a `Parse` body.
pub fn parse(body: Bytes) -> Result<Parse, CodecError> {
    let mut b = body;
    let name = cstr(&mut b, "Parse")?;
    let sql = cstr(&mut b, "Parse")?;
    Ok(Parse { name, sql })
}

/// `Bind` ('B').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Portal name ("" = unnamed).
    pub portal: String,
    /// Prepared statement name.
    pub statement: String,
    /// Each parameter's format (0 text, 1 binary), as PostgreSQL applies
    /// them: none → all text, one → all that one.
    pub formats: Vec<i16>,
    /// Each parameter's value; `None` is SQL NULL.
    pub values: Vec<Option<Bytes>>,
    /// Each result column's format, as [`Bind::format`] applies them.
    pub result_formats: Vec<i16>,
}

/// Reads a `Bind` body.
pub fn bind(body: Bytes) -> Result<Bind, CodecError> {
    const W: &str = "Bind";
    let mut b = body;
    let portal = cstr(&mut b, W)?;
    let statement = cstr(&mut b, W)?;
    let nf = count(i16_(&mut b, W)?, W)?;
    let mut formats = Vec::with_capacity(nf.min(b.remaining() / 2));
    for _ in 0..nf {
        formats.push(i16_(&mut b, W)?);
    }
    let nv = count(i16_(&mut b, W)?, W)?;
    let mut values = Vec::with_capacity(nv.min(b.remaining() / 4));
    for _ in 0..nv {
        let len = i32_(&mut b, W)?;
        if len < 0 {
            values.push(None);
            continue;
        }
        let len = len as usize;
        if b.remaining() < len {
            return Err(CodecError::Malformed(W));
        }
        values.push(Some(b.split_to(len)));
    }
    let nr = count(i16_(&mut b, W)?, W)?;
    let mut result_formats = Vec::with_capacity(nr.min(b.remaining() / 2));
    for _ in 0..nr {
        result_formats.push(i16_(&mut b, W)?);
    }
    Ok(Bind {
        portal,
        statement,
        formats,
        values,
        result_formats,
    })
}

/// Format `i` of a list of format codes, as PostgreSQL applies them: none
/// → all text, one → all that one, else each its own.
pub fn format_at(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

impl Bind {
    /// The format of parameter `i`.
    pub fn format(&self, i: usize) -> i16 {
        format_at(&self.formats, i)
    }
}

/// Reads an `Execute` body: the portal name.
pub fn execute(body: Bytes) -> Result<String, CodecError> {
    let mut b = body;
    cstr(&mut b, "Execute")
}

/// Reads a `Close` or `Describe` body: 'S' or 'P', and the name.
pub fn target(body: Bytes, what: &'static str) -> Result<(u8, String), CodecError> {
    let mut b = body;
    if !b.has_remaining() {
        return Err(CodecError::Malformed(what));
    }
    let kind = b.get_u8();
    Ok((kind, cstr(&mut b, what)?))
}

/// Reads a `Query` body: the text.
pub fn query(body: Bytes) -> Result<String, CodecError> {
    let mut b = body;
    cstr(&mut b, "Query")
}

/// Reads an `SASLInitialResponse` body: mechanism and client-first message.
pub fn sasl_initial(body: Bytes) -> Result<(String, Bytes), CodecError> {
    const W: &str = "SASLInitialResponse";
    let mut b = body;
    let mechanism = cstr(&mut b, W)?;
    let len = i32_(&mut b, W)?;
    let len = usize::try_from(len).map_err(|_| CodecError::Malformed(W))?;
    if b.remaining() < len {
        return Err(CodecError::Malformed(W));
    }
    Ok((mechanism, b.split_to(len)))
}

/// Reads `ReadyForQuery`'s transaction status: `I`, `T` or `E`.
pub fn ready_status(body: &[u8]) -> Result<u8, CodecError> {
    match body.first() {
        Some(s @ (b'I' | b'T' | b'E')) => Ok(*s),
        _ => Err(CodecError::Malformed("ReadyForQuery")),
    }
}

/// Reads a `DataRow`'s values.
pub fn data_row(body: Bytes) -> Result<Vec<Option<Bytes>>, CodecError> {
    const W: &str = "DataRow";
    let mut b = body;
    let n = count(i16_(&mut b, W)?, W)?;
    let mut out = Vec::with_capacity(n.min(b.remaining() / 4));
    for _ in 0..n {
        let len = i32_(&mut b, W)?;
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if b.remaining() < len {
            return Err(CodecError::Malformed(W));
        }
        out.push(Some(b.split_to(len)));
    }
    Ok(out)
}

/// One column of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The column's name.
    pub name: String,
    /// The table's OID, or 0.
    pub table_oid: u32,
    /// The column's type OID.
    pub type_oid: u32,
    /// Format code: 0 text, 1 binary.
    pub format: i16,
}

/// Reads a `RowDescription`.
pub fn row_description(body: Bytes) -> Result<Vec<Field>, CodecError> {
    const W: &str = "RowDescription";
    let mut b = body;
    let n = count(i16_(&mut b, W)?, W)?;
    let mut out = Vec::with_capacity(n.min(b.remaining() / 19));
    for _ in 0..n {
        let name = cstr(&mut b, W)?;
        if b.remaining() < 18 {
            return Err(CodecError::Malformed(W));
        }
        let table_oid = b.get_u32();
        b.advance(2);
        let type_oid = b.get_u32();
        b.advance(2 + 4);
        let format = b.get_i16();
        out.push(Field {
            name,
            table_oid,
            type_oid,
            format,
        });
    }
    Ok(out)
}

/// The fields of an `ErrorResponse` or `NoticeResponse`, by code byte.
pub fn fields(body: Bytes) -> Result<Vec<(u8, String)>, CodecError> {
    let mut b = body;
    let mut out = Vec::new();
    while b.has_remaining() {
        let code = b.get_u8();
        if code == 0 {
            break;
        }
        out.push((code, cstr(&mut b, "ErrorResponse")?));
    }
    Ok(out)
}

/// Reads an `Authentication*` request's code and the rest.
pub fn authentication(body: Bytes) -> Result<(i32, Bytes), CodecError> {
    let mut b = body;
    let code = i32_(&mut b, "Authentication")?;
    Ok((code, b))
}

/// Reads `BackendKeyData`: process id and secret.
pub fn backend_key(body: Bytes) -> Result<(i32, i32), CodecError> {
    let mut b = body;
    Ok((
        i32_(&mut b, "BackendKeyData")?,
        i32_(&mut b, "BackendKeyData")?,
    ))
}

/// Builds messages.
pub mod build {
    use super::*;

    fn tagged(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(tag);
        out.put_i32(0);
        body(&mut out);
        let len = (out.len() - 1) as i32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out.freeze()
    }

    fn put_cstr(out: &mut BytesMut, s: &str) {
        // A NUL inside would end the field early and shift the rest.
        out.put_slice(s.replace('\0', " ").as_bytes());
        out.put_u8(0);
    }

    fn message_fields(
        tag: u8,
        severity: &str,
        code: &str,
        message: &str,
        detail: Option<&str>,
    ) -> Bytes {
        tagged(tag, |o| {
            o.put_u8(b'S');
            put_cstr(o, severity);
            o.put_u8(b'V');
            put_cstr(o, severity);
            o.put_u8(b'C');
            put_cstr(o, code);
            o.put_u8(b'M');
            put_cstr(o, message);
            if let Some(d) = detail {
                o.put_u8(b'D');
                put_cstr(o, d);
            }
            o.put_u8(0);
        })
    }

    /// The message `tag` with `body` as it is (a rewritten copy of one
    /// received).
    pub fn message(tag: u8, body: &[u8]) -> Bytes {
        tagged(tag, |o| o.put_slice(body))
    }

    /// An `ErrorResponse`.
    pub fn error(code: &str, message: &str) -> Bytes {
        message_fields(b'E', "ERROR", code, message, None)
    }

    /// A `FATAL` `ErrorResponse` (the session ends).
    pub fn fatal(code: &str, message: &str) -> Bytes {
        message_fields(b'E', "FATAL", code, message, None)
    }

    /// A `NoticeResponse`.
    pub fn notice(message: &str) -> Bytes {
        message_fields(b'N', "NOTICE", "00000", message, None)
    }

    /// `ReadyForQuery`.
    pub fn ready(status: u8) -> Bytes {
        tagged(b'Z', |o| o.put_u8(status))
    }

    /// `Authentication*` with `code` and `rest`.
    pub fn auth(code: i32, rest: &[u8]) -> Bytes {
        tagged(b'R', |o| {
            o.put_i32(code);
            o.put_slice(rest);
        })
    }

    /// `ParameterStatus`.
    pub fn parameter_status(name: &str, value: &str) -> Bytes {
        tagged(b'S', |o| {
            put_cstr(o, name);
            put_cstr(o, value);
        })
    }

    /// `BackendKeyData`.
    pub fn backend_key(pid: i32, secret: i32) -> Bytes {
        tagged(b'K', |o| {
            o.put_i32(pid);
            o.put_i32(secret);
        })
    }

    /// A `DataRow`.
    pub fn data_row(values: &[Option<Bytes>]) -> Bytes {
        tagged(b'D', |o| {
            o.put_i16(values.len() as i16);
            for v in values {
                match v {
                    None => o.put_i32(-1),
                    Some(v) => {
                        o.put_i32(v.len() as i32);
                        o.put_slice(v);
                    }
                }
            }
        })
    }

    /// The client's `StartupMessage` (protocol 3.0).
    pub fn startup(params: &[(&str, &str)]) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i32(0);
        out.put_i32(196_608);
        for (k, v) in params {
            put_cstr(&mut out, k);
            put_cstr(&mut out, v);
        }
        out.put_u8(0);
        let len = out.len() as i32;
        out[0..4].copy_from_slice(&len.to_be_bytes());
        out.freeze()
    }

    /// `SSLRequest`.
    pub fn ssl_request() -> Bytes {
        let mut out = BytesMut::new();
        out.put_i32(8);
        out.put_i32(SSL_REQUEST);
        out.freeze()
    }

    /// `CancelRequest`.
    pub fn cancel(pid: i32, secret: i32) -> Bytes {
        let mut out = BytesMut::new();
        out.put_i32(16);
        out.put_i32(CANCEL_REQUEST);
        out.put_i32(pid);
        out.put_i32(secret);
        out.freeze()
    }

    /// A `PasswordMessage`-typed message ('p') with `body` as is (password,
    /// SASL responses).
    pub fn password(body: &[u8]) -> Bytes {
        tagged(b'p', |o| o.put_slice(body))
    }

    /// `SASLInitialResponse`.
    pub fn sasl_initial(mechanism: &str, data: &[u8]) -> Bytes {
        tagged(b'p', |o| {
            put_cstr(o, mechanism);
            o.put_i32(data.len() as i32);
            o.put_slice(data);
        })
    }

    /// `Close` of a statement (`S`) or portal (`P`).
    pub fn close(kind: u8, name: &str) -> Bytes {
        tagged(b'C', |o| {
            o.put_u8(kind);
            put_cstr(o, name);
        })
    }

    /// `Describe` of a statement (`S`) or portal (`P`).
    pub fn describe(kind: u8, name: &str) -> Bytes {
        tagged(b'D', |o| {
            o.put_u8(kind);
            put_cstr(o, name);
        })
    }

    /// The message `tag` with `body`'s first `skip` strings replaced by
    /// `name` (Parse's statement name, Execute's portal name).
    pub fn rename(tag: u8, name: &str, body: Bytes, skip: usize) -> Result<Bytes, CodecError> {
        let mut rest = body;
        for _ in 0..skip {
            cstr(&mut rest, "rename")?;
        }
        Ok(tagged(tag, |o| {
            put_cstr(o, name);
            o.put_slice(&rest);
        }))
    }

    /// `Bind` with its portal and statement names replaced.
    pub fn bind_renamed(portal: &str, statement: &str, body: Bytes) -> Result<Bytes, CodecError> {
        let mut rest = body;
        cstr(&mut rest, "Bind")?;
        cstr(&mut rest, "Bind")?;
        Ok(tagged(b'B', |o| {
            put_cstr(o, portal);
            put_cstr(o, statement);
            o.put_slice(&rest);
        }))
    }

    /// `Sync`.
    pub fn sync() -> Bytes {
        tagged(b'S', |_| {})
    }

    /// `ErrorResponse` with a detail line.
    pub fn error_detail(code: &str, message: &str, detail: &str) -> Bytes {
        message_fields(b'E', "ERROR", code, message, Some(detail))
    }

    /// `Terminate`.
    pub fn terminate() -> Bytes {
        tagged(b'X', |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminate_or_a_broken_length_is_a_goodbye() {
        let q = |sql: &str| {
            let mut m = vec![b'Q'];
            m.extend_from_slice(&(4 + sql.len() as i32 + 1).to_be_bytes());
            m.extend_from_slice(sql.as_bytes());
            m.push(0);
            m
        };
        let fresh = |b: &[u8]| says_goodbye(b, &mut 0);
        let mut buf = q("select 1");
        assert!(!fresh(&buf));
        assert!(!fresh(&buf[..7]));
        // Read on as it grows: what was looked at is not looked at again.
        let mut at = 0;
        assert!(!says_goodbye(&buf, &mut at));
        assert_eq!(at, buf.len());
        buf.extend_from_slice(&[b'X', 0, 0, 0, 4]);
        assert!(says_goodbye(&buf, &mut at));
        assert!(fresh(&buf));
        assert!(fresh(&[b'Q', 0, 0, 0, 2]));
        assert!(fresh(&[b'Q', 0xff, 0xff, 0xff, 0xff]));
        assert!(!fresh(&[]));
    }

    #[test]
    fn frames_are_cut_whole_and_only_when_complete() {
        let q = {
            let mut b = BytesMut::new();
            b.put_u8(b'Q');
            b.put_i32(4 + 9);
            b.put_slice(b"SELECT 1\0");
            b
        };
        let mut buf = BytesMut::from(&q[..7]);
        assert_eq!(frame(&mut buf), Ok(None));
        buf.extend_from_slice(&q[7..]);
        buf.extend_from_slice(b"S\0\0\0\x04");
        let f = frame(&mut buf).unwrap().unwrap();
        // Before sign-in, a message's declared length alone refuses it.
        let mut big = BytesMut::from(&b"p\x00\x01\x00\x04"[..]);
        assert!(matches!(
            frame_within(&mut big, MAX_AUTH),
            Err(CodecError::Length(65_540))
        ));
        assert_eq!(f.tag, b'Q');
        assert_eq!(query(f.body()).unwrap(), "SELECT 1");
        assert_eq!(frame(&mut buf).unwrap().unwrap().tag, b'S');
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_lengths_are_errors_not_allocations() {
        for raw in [
            &b"Q\xff\xff\xff\xff"[..],
            b"Q\0\0\0\x02",
            b"Q\x7f\xff\xff\xff",
        ] {
            let mut buf = BytesMut::from(raw);
            assert!(
                matches!(frame(&mut buf), Err(CodecError::Length(_))),
                "{raw:?}"
            );
        }
        let mut buf = BytesMut::from(&b"\xff\xff\xff\xff\0\0\0\0"[..]);
        assert!(startup(&mut buf).is_err());
    }

    #[test]
    fn startup_packets_are_told_apart() {
        let mut buf = BytesMut::from(&build::ssl_request()[..]);
        assert_eq!(startup(&mut buf), Ok(Some(Startup::Ssl)));
        let mut buf = BytesMut::from(&build::cancel(7, 9)[..]);
        assert_eq!(
            startup(&mut buf),
            Ok(Some(Startup::Cancel { pid: 7, secret: 9 }))
        );
        let mut buf = BytesMut::from(&build::startup(&[("user", "alice"), ("database", "db")])[..]);
        let s = startup(&mut buf).unwrap().unwrap();
        assert_eq!(s.param("user"), Some("alice"));
        assert_eq!(s.param("database"), Some("db"));
    }

    #[test]
    fn bind_reads_values_and_nulls_and_refuses_short_bodies() {
        let mut b = BytesMut::new();
        b.put_slice(b"p1\0s1\0");
        b.put_i16(1);
        b.put_i16(0);
        b.put_i16(2);
        b.put_i32(2);
        b.put_slice(b"42");
        b.put_i32(-1);
        b.put_i16(1);
        b.put_i16(1);
        let bound = bind(b.clone().freeze()).unwrap();
        assert_eq!(bound.result_formats, vec![1]);
        assert_eq!(bound.portal, "p1");
        assert_eq!(bound.statement, "s1");
        assert_eq!(bound.values, vec![Some(Bytes::from_static(b"42")), None]);
        assert_eq!(bound.format(1), 0);
        let short = b.freeze().slice(..12);
        assert!(bind(short).is_err());
    }

    #[test]
    fn data_rows_round_trip() {
        let row = vec![
            Some(Bytes::from_static(b"a@b.co")),
            None,
            Some(Bytes::new()),
        ];
        let raw = build::data_row(&row);
        assert_eq!(raw[0], b'D');
        assert_eq!(data_row(raw.slice(5..)).unwrap(), row);
    }

    /// Whatever bytes come in, the codec answers with a value or an
    /// error, never a panic or an allocation the input asks for (a
    /// deterministic stand-in for fuzzing: every parser over many
    /// pseudo-random and truncated inputs).
    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = [
            build::startup(&[("user", "a")]),
            build::data_row(&[Some(Bytes::from_static(b"x")), None]),
            build::error("AL001", "held"),
        ];
        for round in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if round % 3 == 0 {
                // Mutations of valid messages reach deeper than noise.
                let v = &valid[round % valid.len()];
                bytes = v.to_vec();
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
                bytes.truncate(1 + (next() as usize) % bytes.len());
            }
            let body = Bytes::from(bytes.clone());
            let _ = startup(&mut BytesMut::from(&bytes[..]));
            let _ = frame(&mut BytesMut::from(&bytes[..]));
            let _ = parse(body.clone());
            let _ = bind(body.clone());
            let _ = execute(body.clone());
            let _ = target(body.clone(), "Describe");
            let _ = query(body.clone());
            let _ = sasl_initial(body.clone());
            let _ = data_row(body.clone());
            let _ = row_description(body.clone());
            let _ = fields(body.clone());
            let _ = authentication(body.clone());
            let _ = backend_key(body);
        }
    }
}
