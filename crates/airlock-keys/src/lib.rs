//! Airlock's signing keys and what they sign: grant tokens (PASETO
//! v4.public, so there is no algorithm to negotiate) and audit checkpoints
//! (Ed25519 over the chain head). Keys are made on first start and kept in
//! the data directory with owner-only permissions.
#![forbid(unsafe_code)]

mod checkpoint;
mod grant;
mod keyring;
mod note;
mod secretbox;

pub use checkpoint::{Checkpoint, CheckpointError};
pub use grant::{GrantClaims, GrantError};
pub use keyring::{KeyError, Keyring, PublicKey, PublicKeys};
pub use note::{key_hash, open_note, open_note_any, NoteError, TreeHead};
pub use secretbox::{SealError, SecretBox};
