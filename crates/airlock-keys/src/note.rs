//! Checkpoints of the audit log's Merkle tree as C2SP signed notes
//! (`tlog-checkpoint`): the origin line, the tree size, the base64 root,
//! then a blank line and an Ed25519 signature line `— NAME BASE64`, where
//! BASE64 is the key hash (the first 4 bytes of SHA-256(NAME ‖ "\n" ‖ 0x01
//! ‖ public key)) followed by the signature over the text above the blank
//! line. Any tool that reads Go's `sumdb/note` or a transparency-dev
//! witness reads these.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, Verifier};
use sha2::{Digest, Sha256};

use crate::{Keyring, PublicKey};

/// What a checkpoint says: which log, how many records, which root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// The log's origin line.
    pub origin: String,
    /// The number of records.
    pub size: u64,
    /// The Merkle tree head of those records.
    pub root: [u8; 32],
}

/// Why a note was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// Not a checkpoint note.
    #[error("not a checkpoint: {0}")]
    Malformed(&'static str),
    /// No signature by the expected key verifies.
    #[error("no valid signature by {0}")]
    Unsigned(String),
}

/// The key hash C2SP signed notes put before an Ed25519 signature.
pub fn key_hash(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([0x01]);
    h.update(key.0.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The note's signed text: origin, size and root, one per line.
fn body(head: &TreeHead) -> String {
    format!(
        "{}\n{}\n{}\n",
        head.origin,
        head.size,
        B64.encode(head.root)
    )
}

impl Keyring {
    /// Signs a checkpoint of the tree `head` with the audit key, named by
    /// the log's origin.
    pub fn sign_note(&self, head: &TreeHead) -> String {
        let text = body(head);
        let sig = self.audit.sign(text.as_bytes());
        let mut blob = key_hash(&head.origin, &self.public().audit).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{text}\n\u{2014} {} {}\n", head.origin, B64.encode(blob))
    }
}

/// [`open_note`] with any of `keys` (the current audit key and those it
/// replaced).
pub fn open_note_any(note: &str, keys: &[PublicKey]) -> Result<TreeHead, NoteError> {
    let mut last = NoteError::Malformed("no key to check it with");
    for k in keys {
        match open_note(note, k) {
            Ok(head) => return Ok(head),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Reads a checkpoint note and checks its signature by `key` (named by the
/// note's own origin). Other signatures (a witness's cosignature) are
/// allowed and ignored.
pub fn open_note(note: &str, key: &PublicKey) -> Result<TreeHead, NoteError> {
    let (text, sigs) = note
        .split_once("\n\n")
        .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
    let text = format!("{text}\n");
    let mut lines = text.lines();
    let origin = lines
        .next()
        .filter(|o| !o.is_empty())
        .ok_or(NoteError::Malformed("no origin"))?;
    let size: u64 = lines
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(NoteError::Malformed("no tree size"))?;
    let root: [u8; 32] = lines
        .next()
        .and_then(|r| B64.decode(r).ok())
        .and_then(|r| r.try_into().ok())
        .ok_or(NoteError::Malformed("no root hash"))?;
    if signed_by(&text, sigs, origin, key) {
        return Ok(TreeHead {
            origin: origin.to_owned(),
            size,
            root,
        });
    }
    Err(NoteError::Unsigned(origin.to_owned()))
}

/// Whether one of the signature lines `sigs` is `name`'s Ed25519 signature
/// by `key` over `text` (any signed note, checkpoint or not).
fn signed_by(text: &str, sigs: &str, name: &str, key: &PublicKey) -> bool {
    let want = key_hash(name, key);
    sigs.lines().any(|line| {
        let Some((n, blob)) = line
            .strip_prefix("\u{2014} ")
            .and_then(|r| r.split_once(' '))
        else {
            return false;
        };
        let Ok(blob) = B64.decode(blob) else {
            return false;
        };
        if n != name || blob.len() != 68 || blob[..4] != want {
            return false;
        }
        let Ok(sig) = <[u8; 64]>::try_from(&blob[4..]) else {
            return false;
        };
        key.0
            .verify(text.as_bytes(), &Signature::from_bytes(&sig))
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of Go's `golang.org/x/mod/sumdb/note` (and of C2SP
    /// signed-note): PeterNeumann's key, whose key hash is c74f20a3, and
    /// the signature over the two-line text.
    #[test]
    fn signed_note_known_answer() {
        let vkey = "ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let raw = B64.decode(vkey).unwrap();
        assert_eq!(raw[0], 0x01, "type Ed25519");
        let key: [u8; 32] = raw[1..].try_into().unwrap();
        let key = PublicKey(ed25519_dalek::VerifyingKey::from_bytes(&key).unwrap());
        assert_eq!(hex::encode(key_hash("PeterNeumann", &key)), "c74f20a3");
        let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n";
        let sigs = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert!(signed_by(text, sigs, "PeterNeumann", &key));
        // Any change to the text, the name or the key hash is refused.
        assert!(!signed_by(
            &text.replace("cryptography", "cryptographY"),
            sigs,
            "PeterNeumann",
            &key
        ));
        assert!(!signed_by(
            text,
            &sigs.replace("PeterNeumann", "PeterNeuman"),
            "PeterNeuman",
            &key
        ));
        assert!(!signed_by(
            text,
            &sigs.replace("x08go", "x08gp"),
            "PeterNeumann",
            &key
        ));
        assert!(!signed_by(
            text,
            sigs,
            "PeterNeumann",
            &Keyring::ephemeral().public().audit
        ));
    }

    #[test]
    fn a_note_round_trips_and_every_change_is_refused() {
        let k = Keyring::ephemeral();
        let head = TreeHead {
            origin: "example.com/airlock".into(),
            size: 42,
            root: [7; 32],
        };
        let note = k.sign_note(&head);
        assert!(note.starts_with("example.com/airlock\n42\nBwcH"));
        assert!(note.contains("\n\n\u{2014} example.com/airlock "));
        assert_eq!(open_note(&note, &k.public().audit), Ok(head));
        // Another key, another size, another origin: refused.
        assert!(open_note(&note, &k.public().grant).is_err());
        assert!(open_note(&note.replacen("\n42\n", "\n41\n", 1), &k.public().audit).is_err());
        assert!(open_note(
            &note.replace("example.com/airlock", "evil.com/log"),
            &k.public().audit
        )
        .is_err());
        assert!(open_note("garbage", &k.public().audit).is_err());
        // A witness's cosignature line after ours changes nothing.
        let cosigned = format!("{note}\u{2014} witness.example AAAA\n");
        assert!(open_note(&cosigned, &k.public().audit).is_ok());
    }
}
