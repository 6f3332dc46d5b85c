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
