//! SCRAM-SHA-256 (RFC 5802, RFC 7677) verifiers for API keys, so an API key
//! can be the password of a PostgreSQL session at Airlock's proxy without
//! the key itself being stored.
//!
//! The salt is derived from the user name rather than drawn at random: the
//! server's first SCRAM message must name one salt before the client has
//! said which of the user's keys it holds, so all of one user's keys share
//! it, and the proxy can compute it without asking. A salt exists to make
//! precomputation across users useless; API keys are 256 random bits, so
//! there is nothing to precompute either way.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::UserName;

/// PBKDF2 rounds, PostgreSQL's default.
pub const ITERATIONS: u32 = 4096;

const MECHANISM: &str = "SCRAM-SHA-256";

/// The salt every SCRAM verifier of `user` is made with.
pub fn salt(user: &UserName) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"airlock scram salt v1\0");
    h.update(user.as_str().as_bytes());
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// What the server keeps of one password: enough to check a client's proof
/// and prove itself back, not enough to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// The verifier of `password` for `user` (salt from [`salt`]).
    pub fn derive(user: &UserName, password: &str) -> Self {
        let salt = salt(user);
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Self {
            iterations: ITERATIONS,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Reads PostgreSQL's form, `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix(MECHANISM)?.strip_prefix('$')?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let key = |k: &str| -> Option<[u8; 32]> { B64.decode(k).ok()?.try_into().ok() };
        Some(Self {
            iterations: iterations.parse().ok().filter(|n| *n > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Whether this verifier was made with `salt` (one of the user's).
    pub fn uses_salt(&self, salt: &[u8], iterations: u32) -> bool {
        self.salt == salt && self.iterations == iterations
    }

    /// Checks a client's proof over `auth_message` (RFC 5802 §3); on
    /// success, the server signature to send back in `v=`.
    pub fn check(&self, auth_message: &[u8], proof: &[u8]) -> Option<[u8; 32]> {
        let proof: [u8; 32] = proof.try_into().ok()?;
        let signature = hmac(&self.stored_key, auth_message);
        let mut client_key = [0u8; 32];
        for (i, b) in client_key.iter_mut().enumerate() {
            *b = proof[i] ^ signature[i];
        }
        let candidate: [u8; 32] = Sha256::digest(client_key).into();
        if bool::from(candidate.ct_eq(&self.stored_key)) {
            Some(hmac(&self.server_key, auth_message))
        } else {
            None
        }
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{MECHANISM}${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// The client's side of the proof, for tests and for clients written in
/// Rust: `ClientKey XOR HMAC(StoredKey, AuthMessage)`.
pub fn client_proof(user: &UserName, password: &str, auth_message: &[u8]) -> [u8; 32] {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt(user), ITERATIONS, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored: [u8; 32] = Sha256::digest(client_key).into();
    let signature = hmac(&stored, auth_message);
    let mut proof = [0u8; 32];
    for (i, b) in proof.iter_mut().enumerate() {
        *b = client_key[i] ^ signature[i];
    }
    proof
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    #[test]
    fn a_proof_made_with_the_key_passes_and_any_other_fails() {
        let v = Verifier::derive(&alice(), "alk_secret");
        let msg = b"n=,r=abc,r=abcdef,s=c2FsdA==,i=4096,c=biws,r=abcdef";
        let proof = client_proof(&alice(), "alk_secret", msg);
        assert!(v.check(msg, &proof).is_some());
        assert!(v.check(b"another message", &proof).is_none());
        let wrong = client_proof(&alice(), "alk_other", msg);
        assert!(v.check(msg, &wrong).is_none());
        assert!(v.check(msg, &proof[..31]).is_none());
        let bob = UserName::parse("bob").unwrap();
        assert!(v
            .check(msg, &client_proof(&bob, "alk_secret", msg))
            .is_none());
    }

    #[test]
    fn the_stored_form_round_trips_and_bad_forms_are_refused() {
        let v = Verifier::derive(&alice(), "alk_secret");
        let s = v.to_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(Verifier::parse(&s), Some(v.clone()));
        assert!(v.uses_salt(&salt(&alice()), ITERATIONS));
        for bad in [
            "",
            "SCRAM-SHA-256$",
            "MD5$1:AA==$AA==:AA==",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
        ] {
            assert_eq!(Verifier::parse(bad), None, "{bad}");
        }
    }

    /// The server signature matches what a standard client computes
    /// (postgres-protocol's, in the proxy's tests), since the derivation is
    /// RFC 5802's: the salted password from PBKDF2, the keys from HMAC.
    #[test]
    fn the_verifier_matches_rfc_7677_s_example() {
        // RFC 7677 §3: user "user", password "pencil", salt
        // W22ZaJ0SNY7soEsUEjb6gQ==, 4096 rounds.
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(b"pencil", &salt, 4096, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let v = Verifier {
            iterations: 4096,
            salt,
            stored_key: stored,
            server_key: hmac(&salted, b"Server Key"),
        };
        let auth = "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let proof = B64
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        let sig = v.check(auth.as_bytes(), &proof).expect("the RFC's proof");
        assert_eq!(
            B64.encode(sig),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }
}
