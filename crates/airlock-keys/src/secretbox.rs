//! Secrets kept encrypted at rest (TOTP seeds): XChaCha20-Poly1305 under
//! `secrets.key` in the key folder (made on first use, owner-only, shared
//! by every node like the signing keys). Each sealed value is bound to what
//! it belongs to (its user), so a row copied to another user does not open.

use std::path::Path;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::keyring::{create_private_dir, load_or_create_seed};
use crate::KeyError;

/// What sealed text starts with: the format, so it can change later.
const PREFIX: &str = "v1.";

/// A sealed value that does not open: not sealed by this key, changed, or
/// bound to something else. One error, so nothing is learned from which.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a sealed secret does not open with this deployment's secrets.key")]
pub struct SealError;

/// The deployment's key for secrets at rest.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    /// A one-way fingerprint of the key, see [`SecretBox::fingerprint`].
    fingerprint: String,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Loads `dir/secrets.key`, creating it if missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        create_private_dir(dir)?;
        let (key, _) = load_or_create_seed(&dir.join("secrets.key"))?;
        Ok(Self::from_key(&key))
    }

    fn from_key(key: &[u8; 32]) -> Self {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"airlock secrets.key fingerprint v1\0");
        h.update(key);
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            fingerprint: format!("sha256:{}", hex::encode(h.finalize())),
        }
    }

    /// A fingerprint of the key (a SHA-256 over a fixed label and the
    /// key; the key's 256 random bits cannot be found from it), so that
    /// every node of a deployment can be checked to hold the same key:
    /// one that does not cannot open what the others sealed.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// `plain` sealed for `bound_to`, as text: `v1.` and the base64 of a
    /// random 24-byte nonce and the ciphertext with its tag.
    pub fn seal(&self, plain: &[u8], bound_to: &str) -> String {
        let mut nonce = [0u8; 24];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let payload = Payload {
            msg: plain,
            aad: bound_to.as_bytes(),
        };
        // Local invariant: encryption with a valid key and a 24-byte nonce
        // fails only for messages beyond 256 GiB.
        let sealed = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
        )
    }

    /// The secret sealed in `text` for `bound_to`.
    pub fn open(&self, text: &str, bound_to: &str) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let raw = text
            .strip_prefix(PREFIX)
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(b)
                    .ok()
            })
            .ok_or(SealError)?;
        if raw.len() < 24 + 16 {
            return Err(SealError);
        }
        let (nonce, sealed) = raw.split_at(24);
        let payload = Payload {
            msg: sealed,
            aad: bound_to.as_bytes(),
        };
        self.cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map(Zeroizing::new)
            .map_err(|_| SealError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_for_whom_they_were_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let sb = SecretBox::load_or_create(&keys).unwrap();
        let text = sb.seal(b"twenty bytes secret!", "alice");
        assert!(text.starts_with("v1.") && !text.contains("twenty"));
        assert_eq!(&*sb.open(&text, "alice").unwrap(), b"twenty bytes secret!");
        assert_ne!(
            text,
            sb.seal(b"twenty bytes secret!", "alice"),
            "fresh nonce"
        );
        assert_eq!(sb.open(&text, "bob"), Err(SealError), "bound to alice");
        let mut changed = text.clone().into_bytes();
        let last = changed.len() - 2;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            sb.open(std::str::from_utf8(&changed).unwrap(), "alice"),
            Err(SealError)
        );
        assert_eq!(sb.open("v1.", "alice"), Err(SealError));
        assert_eq!(sb.open("garbage", "alice"), Err(SealError));
        // The same key file opens it again (another node, a restart).
        let again = SecretBox::load_or_create(&keys).unwrap();
        assert_eq!(
            &*again.open(&text, "alice").unwrap(),
            b"twenty bytes secret!"
        );
        let other = SecretBox::load_or_create(&dir.path().join("other")).unwrap();
        assert_eq!(other.open(&text, "alice"), Err(SealError));
    }
}
