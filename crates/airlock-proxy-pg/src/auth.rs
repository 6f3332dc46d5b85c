//! Both logins of a session: the client's to Airlock (SCRAM-SHA-256, the
//! API key as password, the proof checked by the server so the proxy holds
//! no verifier) and Airlock's own to the database (its credentials from the
//! upstream URL: SCRAM, MD5, cleartext or trust, as the server asks).

use airlock_core::scram;
use airlock_core::UserName;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::RngCore;

use crate::codec::{self, build};

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The client's messages do not follow SCRAM.
    #[error("SCRAM exchange: {0}")]
    Protocol(&'static str),
    /// The database refused Airlock, or asked for something it cannot do.
    #[error("upstream login: {0}")]
    Upstream(String),
}

/// The server side of one client's SCRAM exchange, between messages.
pub struct ScramServer {
    user: UserName,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// `c=` the client must send back: the base64 of its GS2 header.
    binding: String,
}

/// `AuthenticationSASL` offering SCRAM-SHA-256 (no channel binding).
pub fn offer() -> Bytes {
    build::auth(10, b"SCRAM-SHA-256\0\0")
}

impl ScramServer {
    /// Reads the client's first message (`SASLInitialResponse` body) and
    /// answers `AuthenticationSASLContinue` with the user's salt.
    pub fn start(user: UserName, body: Bytes) -> Result<(Self, Bytes), LoginError> {
        let (mechanism, data) = codec::sasl_initial(body)
            .map_err(|_| LoginError::Protocol("malformed first message"))?;
        if mechanism != "SCRAM-SHA-256" {
            return Err(LoginError::Protocol("only SCRAM-SHA-256 is offered"));
        }
        let first = std::str::from_utf8(&data)
            .map_err(|_| LoginError::Protocol("first message is not UTF-8"))?;
        // gs2-header: "n,," (no binding) or "y,," (client could bind, we
        // did not offer); "p=…" asks for binding we never offered.
        let (header, bare) = if let Some(rest) = first.strip_prefix("n,,") {
            ("n,,", rest)
        } else if let Some(rest) = first.strip_prefix("y,,") {
            ("y,,", rest)
        } else {
            return Err(LoginError::Protocol("channel binding was not offered"));
        };
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or(LoginError::Protocol("no client nonce"))?;
        let mut raw = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(scram::salt(&user)),
            scram::ITERATIONS
        );
        let reply = build::auth(11, server_first.as_bytes());
        Ok((
            Self {
                user,
                client_first_bare: bare.to_owned(),
                server_first,
                nonce,
                binding: B64.encode(header),
            },
            reply,
        ))
    }

    /// Reads the client's final message (`SASLResponse` body): the
    /// AuthMessage and proof for the server to check.
    pub fn finish(&self, body: &[u8]) -> Result<airlock_api::ScramLoginBody, LoginError> {
        let fin = std::str::from_utf8(body)
            .map_err(|_| LoginError::Protocol("final message is not UTF-8"))?;
        let (without_proof, proof) = fin
            .rsplit_once(",p=")
            .ok_or(LoginError::Protocol("no proof"))?;
        let mut binding = None;
        let mut nonce = None;
        for a in without_proof.split(',') {
            if let Some(c) = a.strip_prefix("c=") {
                binding = Some(c);
            } else if let Some(r) = a.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        if binding != Some(self.binding.as_str()) {
            return Err(LoginError::Protocol("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(LoginError::Protocol("nonce does not match"));
        }
        Ok(airlock_api::ScramLoginBody {
            user: self.user.clone(),
            auth_message: format!(
                "{},{},{}",
                self.client_first_bare, self.server_first, without_proof
            ),
            proof: proof.to_owned(),
        })
    }
}

/// `AuthenticationSASLFinal` with the server's signature, then
/// `AuthenticationOk`.
pub fn accepted(server_signature: &str) -> Vec<Bytes> {
    vec![
        build::auth(12, format!("v={server_signature}").as_bytes()),
        build::auth(0, b""),
    ]
}

/// Airlock's side of the database's login, one `Authentication*` message
/// at a time.
pub struct UpstreamLogin {
    user: String,
    password: Option<String>,
    scram: Option<ScramSha256>,
}

/// What to do after an `Authentication*` message from the database.
pub enum Step {
    /// Send this and read on.
    Send(Bytes),
    /// Read on (nothing to send).
    Wait,
    /// Logged in.
    Done,
}

impl UpstreamLogin {
    /// A login as `user` with `password`.
    pub fn new(user: String, password: Option<String>) -> Self {
        Self {
            user,
            password,
            scram: None,
        }
    }

    fn password(&self) -> Result<&str, LoginError> {
        self.password.as_deref().ok_or_else(|| {
            LoginError::Upstream("the server asks for a password; the upstream URL has none".into())
        })
    }

    /// Answers one `Authentication*` message (its body).
    pub fn step(&mut self, body: Bytes) -> Result<Step, LoginError> {
        let (code, rest) =
            codec::authentication(body).map_err(|e| LoginError::Upstream(e.to_string()))?;
        match code {
            0 => Ok(Step::Done),
            3 => {
                let mut p = self.password()?.as_bytes().to_vec();
                p.push(0);
                Ok(Step::Send(build::password(&p)))
            }
            5 => {
                let salt: [u8; 4] = rest
                    .get(..4)
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(|| LoginError::Upstream("short MD5 salt".into()))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    self.user.as_bytes(),
                    self.password()?.as_bytes(),
                    salt,
                );
                let mut p = hash.into_bytes();
                p.push(0);
                Ok(Step::Send(build::password(&p)))
            }
            10 => {
                let offered = rest.split(|b| *b == 0).any(|m| m == b"SCRAM-SHA-256");
                if !offered {
                    return Err(LoginError::Upstream(
                        "the server offers no SASL mechanism Airlock speaks".into(),
                    ));
                }
                let s =
                    ScramSha256::new(self.password()?.as_bytes(), ChannelBinding::unsupported());
                let first = build::sasl_initial("SCRAM-SHA-256", s.message());
                self.scram = Some(s);
                Ok(Step::Send(first))
            }
            11 => {
                let s = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| LoginError::Upstream("SASL continue before start".into()))?;
                s.update(&rest)
                    .map_err(|e| LoginError::Upstream(format!("SCRAM: {e}")))?;
                Ok(Step::Send(build::password(s.message())))
            }
            12 => {
                let s = self
                    .scram
                    .as_mut()
                    .ok_or_else(|| LoginError::Upstream("SASL final before start".into()))?;
                // Verifies the server's signature: the database proved it
                // knows Airlock's password.
                s.finish(&rest)
                    .map_err(|e| LoginError::Upstream(format!("SCRAM: {e}")))?;
                Ok(Step::Wait)
            }
            other => Err(LoginError::Upstream(format!(
                "the server asks for authentication method {other}, which Airlock does not speak"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn initial(data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(b"SCRAM-SHA-256\0");
        b.put_i32(data.len() as i32);
        b.put_slice(data);
        b.freeze()
    }

    /// A standard client (postgres-protocol's) logs in against a verifier
    /// made from the same key: the proof checks, and the client accepts
    /// the server's signature.
    #[test]
    fn a_standard_client_and_airlock_agree() {
        let alice = UserName::parse("alice").unwrap();
        let key = "alk_testkey";
        let verifier = scram::Verifier::derive(&alice, key);
        let mut client = ScramSha256::new(key.as_bytes(), ChannelBinding::unsupported());
        let (server, cont) = ScramServer::start(alice.clone(), initial(client.message())).unwrap();
        // The continue message's body after the code.
        client.update(&cont[9..]).unwrap();
        let login = server.finish(client.message()).unwrap();
        let proof = B64.decode(&login.proof).unwrap();
        let sig = verifier
            .check(login.auth_message.as_bytes(), &proof)
            .expect("proof");
        let fin = accepted(&B64.encode(sig));
        client.finish(&fin[0][9..]).unwrap();

        let other = scram::Verifier::derive(&alice, "alk_other");
        assert!(other.check(login.auth_message.as_bytes(), &proof).is_none());
    }

    #[test]
    fn a_replayed_or_rebound_final_message_is_refused() {
        let alice = UserName::parse("alice").unwrap();
        let (server, _) = ScramServer::start(alice, initial(b"n,,n=,r=abc")).unwrap();
        assert!(
            server.finish(b"c=biws,r=abc,p=AAAA").is_err(),
            "nonce without the server's part"
        );
        let good_nonce = server.nonce.clone();
        let rebound = format!("c=eSws,r={good_nonce},p=AAAA");
        assert!(server.finish(rebound.as_bytes()).is_err());
        assert!(ScramServer::start(
            UserName::parse("a").unwrap(),
            initial(b"p=tls-unique,,n=,r=x")
        )
        .is_err());
    }

    /// Airlock's own login upstream, against a SCRAM server (this module's,
    /// with a verifier of the password): the proof passes and the server's
    /// final signature is checked; a wrong signature fails the login.
    #[test]
    fn the_upstream_login_speaks_scram_and_checks_the_server() {
        let user = UserName::parse("airlock").unwrap();
        let verifier = scram::Verifier::derive(&user, "db-secret");
        for forge in [false, true] {
            let mut login = UpstreamLogin::new("airlock".into(), Some("db-secret".into()));
            let Step::Send(first) = login
                .step(build::auth(10, b"SCRAM-SHA-256\0\0").slice(5..))
                .unwrap()
            else {
                panic!("no initial response")
            };
            let (server, cont) = ScramServer::start(user.clone(), first.slice(5..)).unwrap();
            let Step::Send(fin) = login.step(cont.slice(5..)).unwrap() else {
                panic!("no final response")
            };
            let body = server.finish(&fin[5..]).unwrap();
            let proof = B64.decode(&body.proof).unwrap();
            let sig = verifier
                .check(body.auth_message.as_bytes(), &proof)
                .expect("the proof passes");
            let sig = if forge { [0u8; 32] } else { sig };
            let done = login.step(accepted(&B64.encode(sig))[0].slice(5..));
            assert_eq!(done.is_ok(), !forge, "forged: {forge}");
        }
        // MD5 and cleartext when asked, a password required for either.
        let mut login = UpstreamLogin::new("airlock".into(), Some("pw".into()));
        assert!(matches!(
            login.step(build::auth(3, b"").slice(5..)),
            Ok(Step::Send(_))
        ));
        assert!(matches!(
            login.step(build::auth(5, b"salt").slice(5..)),
            Ok(Step::Send(_))
        ));
        let mut none = UpstreamLogin::new("airlock".into(), None);
        assert!(none.step(build::auth(3, b"").slice(5..)).is_err());
        assert!(
            none.step(build::auth(7, b"").slice(5..)).is_err(),
            "GSSAPI is not spoken"
        );
    }
}
