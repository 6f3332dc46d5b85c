//! Grant tokens: PASETO v4.public over Airlock's claims, bound to one
//! action's fingerprint. Anyone with the public key can verify one offline;
//! only the store can say whether it is still unspent.

use airlock_core::{Fingerprint, GrantId, RequestId, UserName};
use chrono::{DateTime, Utc};
use pasetors::keys::{AsymmetricPublicKey, AsymmetricSecretKey};
use pasetors::token::UntrustedToken;
use pasetors::version4::{PublicToken, V4};
use pasetors::Public;
use serde::{Deserialize, Serialize};

use crate::{Keyring, PublicKey};

/// Binds the signature to this use, so no other Airlock signature (or a
/// future token format) can be replayed as a grant.
const IMPLICIT: &[u8] = b"airlock-grant-v1";

/// What a grant token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantClaims {
    /// The grant's id.
    pub jti: GrantId,
    /// The approved request.
    pub req: RequestId,
    /// The requester.
    pub sub: UserName,
    /// The action it is good for.
    pub fp: Fingerprint,
    /// When it was issued.
    pub iat: DateTime<Utc>,
    /// When it stops being good.
    pub exp: DateTime<Utc>,
    /// How many uses it carries.
    pub max_uses: u32,
}

/// Why a token was refused before the store was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not a token we signed, or malformed.
    #[error("not a valid grant token")]
    Invalid,
    /// Signed by us, but past its expiry.
    #[error("grant expired at {0}")]
    Expired(DateTime<Utc>),
    /// Signing failed (a key problem): nothing is issued.
    #[error("cannot sign grant: {0}")]
    Sign(String),
}

impl Keyring {
    /// Signs a grant token.
    pub fn sign_grant(&self, claims: &GrantClaims) -> Result<String, GrantError> {
        let sk = AsymmetricSecretKey::<V4>::from(&self.grant.to_keypair_bytes())
            .map_err(|e| GrantError::Sign(e.to_string()))?;
        let payload = serde_json::to_vec(claims).map_err(|e| GrantError::Sign(e.to_string()))?;
        PublicToken::sign(&sk, &payload, None, Some(IMPLICIT))
            .map_err(|e| GrantError::Sign(e.to_string()))
    }
}

impl GrantClaims {
    /// Verifies `token`'s signature with `key` and its expiry against `now`.
    pub fn verify(
        key: &PublicKey,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<GrantClaims, GrantError> {
        let pk =
            AsymmetricPublicKey::<V4>::from(key.0.as_bytes()).map_err(|_| GrantError::Invalid)?;
        let untrusted =
            UntrustedToken::<Public, V4>::try_from(token).map_err(|_| GrantError::Invalid)?;
        let trusted = PublicToken::verify(&pk, &untrusted, None, Some(IMPLICIT))
            .map_err(|_| GrantError::Invalid)?;
        // We never put a footer on grants; one there means someone else made it.
        if !untrusted.untrusted_footer().is_empty() {
            return Err(GrantError::Invalid);
        }
        let claims: GrantClaims =
            serde_json::from_str(trusted.payload()).map_err(|_| GrantError::Invalid)?;
        if now >= claims.exp {
            return Err(GrantError::Expired(claims.exp));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PASETO's official v4.public vectors (paseto-standard/test-vectors,
    /// v4.json): one key pair, 4-S-1 (no footer, no implicit assertion) and
    /// 4-S-3 (both).
    mod vectors {
        pub const PUBLIC: &str = "1eb9dbbbbc047c03fd70604e0071f0987e16b28b757225c11f00415d0e20b1a2";
        pub const SECRET: &str = "b4cbfb43df4ce210727d953e4a713307fa19bb7d9f85041438d9e11b942a37741eb9dbbbbc047c03fd70604e0071f0987e16b28b757225c11f00415d0e20b1a2";
        pub const S1: &str = "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9bg_XBBzds8lTZShVlwwKSgeKpLT3yukTw6JUz3W4h_ExsQV-P0V54zemZDcAxFaSeef1QlXEFtkqxT1ciiQEDA";
        pub const S3: &str = "v4.public.eyJkYXRhIjoidGhpcyBpcyBhIHNpZ25lZCBtZXNzYWdlIiwiZXhwIjoiMjAyMi0wMS0wMVQwMDowMDowMCswMDowMCJ9NPWciuD3d0o5eXJXG5pJy-DiVEoyPYWs1YSTwWHNJq6DZD3je5gf-0M4JR9ipdUSJbIovzmBECeaWmaqcaP0DQ.eyJraWQiOiJ6VmhNaVBCUDlmUmYyc25FY1Q3Z0ZUaW9lQTlDT2NOeTlEZmdMMVc2MGhhTiJ9";
        pub const PAYLOAD: &str =
            r#"{"data":"this is a signed message","exp":"2022-01-01T00:00:00+00:00"}"#;
        pub const FOOTER: &[u8] = br#"{"kid":"zVhMiPBP9fRf2snEcT7gFTioeA9COcNy9DfgL1W60haN"}"#;
        pub const IMPLICIT: &[u8] = br#"{"test-vector":"4-S-3"}"#;
    }

    /// The signing Airlock's grants rest on gives exactly the official
    /// tokens (Ed25519 is deterministic) and verifies them.
    #[test]
    fn paseto_v4_public_known_answers() {
        use vectors::*;
        let sk = AsymmetricSecretKey::<V4>::from(&hex::decode(SECRET).unwrap()).unwrap();
        let pk = AsymmetricPublicKey::<V4>::from(&hex::decode(PUBLIC).unwrap()).unwrap();
        let s1 = PublicToken::sign(&sk, PAYLOAD.as_bytes(), None, None).unwrap();
        assert_eq!(s1, S1);
        let s3 = PublicToken::sign(&sk, PAYLOAD.as_bytes(), Some(FOOTER), Some(IMPLICIT)).unwrap();
        assert_eq!(s3, S3);
        let t = UntrustedToken::<Public, V4>::try_from(S3).unwrap();
        let trusted = PublicToken::verify(&pk, &t, Some(FOOTER), Some(IMPLICIT)).unwrap();
        assert_eq!(trusted.payload(), PAYLOAD);
        // The same token under another implicit assertion, or another
        // footer, is refused: the assertion is what tags a signature's
        // purpose, and Airlock's grants use their own.
        assert!(PublicToken::verify(&pk, &t, Some(FOOTER), Some(b"airlock-grant-v1")).is_err());
        assert!(PublicToken::verify(&pk, &t, Some(b"{}"), Some(IMPLICIT)).is_err());
    }

    /// Tokens that are sound PASETO but not Airlock grants are `Invalid`:
    /// the official vectors (no grant purpose), one signed with the grant
    /// purpose but carrying a footer, and one whose payload is no grant.
    #[test]
    fn official_vectors_are_not_grants() {
        use vectors::*;
        let key: [u8; 32] = hex::decode(PUBLIC).unwrap().try_into().unwrap();
        let ours = PublicKey(ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap());
        let at = DateTime::parse_from_rfc3339("2021-06-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(GrantClaims::verify(&ours, S1, at), Err(GrantError::Invalid));
        assert_eq!(GrantClaims::verify(&ours, S3, at), Err(GrantError::Invalid));
        let sk = AsymmetricSecretKey::<V4>::from(&hex::decode(SECRET).unwrap()).unwrap();
        let not_claims =
            PublicToken::sign(&sk, PAYLOAD.as_bytes(), None, Some(super::IMPLICIT)).unwrap();
        assert_eq!(
            GrantClaims::verify(&ours, &not_claims, at),
            Err(GrantError::Invalid)
        );
        let c = claims(600);
        let payload = serde_json::to_vec(&c).unwrap();
        let footed = PublicToken::sign(&sk, &payload, Some(b"x"), Some(super::IMPLICIT)).unwrap();
        assert_eq!(
            GrantClaims::verify(&ours, &footed, Utc::now()),
            Err(GrantError::Invalid)
        );
        let plain = PublicToken::sign(&sk, &payload, None, Some(super::IMPLICIT)).unwrap();
        assert_eq!(GrantClaims::verify(&ours, &plain, Utc::now()), Ok(c));
    }

    fn claims(exp_in: i64) -> GrantClaims {
        let now = Utc::now();
        GrantClaims {
            jti: GrantId::new(),
            req: RequestId::new(),
            sub: UserName::parse("alice").unwrap(),
            fp: Fingerprint::parse(&"ab".repeat(32)).unwrap(),
            iat: now,
            exp: now + chrono::Duration::seconds(exp_in),
            max_uses: 1,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let k = Keyring::ephemeral();
        let c = claims(600);
        let t = k.sign_grant(&c).unwrap();
        assert!(t.starts_with("v4.public."));
        assert_eq!(
            GrantClaims::verify(&k.public().grant, &t, Utc::now()).unwrap(),
            c
        );
    }

    #[test]
    fn refuses_other_key_tamper_and_expiry() {
        let k = Keyring::ephemeral();
        let t = k.sign_grant(&claims(600)).unwrap();
        // Another deployment's key, and this deployment's audit key.
        assert_eq!(
            GrantClaims::verify(&Keyring::ephemeral().public().grant, &t, Utc::now()),
            Err(GrantError::Invalid)
        );
        assert_eq!(
            GrantClaims::verify(&k.public().audit, &t, Utc::now()),
            Err(GrantError::Invalid)
        );
        let mut bytes = t.clone().into_bytes();
        let i = bytes.len() - 10;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(bytes).unwrap();
        assert_eq!(
            GrantClaims::verify(&k.public().grant, &forged, Utc::now()),
            Err(GrantError::Invalid)
        );
        assert_eq!(
            GrantClaims::verify(&k.public().grant, "garbage", Utc::now()),
            Err(GrantError::Invalid)
        );
        let expired = k.sign_grant(&claims(-1)).unwrap();
        assert!(matches!(
            GrantClaims::verify(&k.public().grant, &expired, Utc::now()),
            Err(GrantError::Expired(_))
        ));
    }
}
