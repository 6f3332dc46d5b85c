//! Loads or creates the two Ed25519 keys (one for grants, one for audit
//! checkpoints; separate so neither signature can stand in for the other).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// Why keys could not be loaded or created. The server does not start.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing a key file.
    #[error("{path}: {source}")]
    Io {
        /// The key file or folder.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file does not hold a 32-byte hex seed.
    #[error("{0}: not an Ed25519 key (expected 64 hex digits)")]
    Malformed(PathBuf),
    /// Others can read the file.
    #[error("{0}: readable by others (mode {1:o}); run `chmod 600` on it")]
    Permissions(PathBuf, u32),
    /// A public key given for verification is not valid.
    #[error("public key: {0}")]
    BadPublic(String),
}

/// The signing keys of one deployment. Every node of a cluster must hold the
/// same files.
pub struct Keyring {
    pub(crate) grant: SigningKey,
    pub(crate) audit: SigningKey,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("grant", &key_id(&self.grant.verifying_key()))
            .field("audit", &key_id(&self.audit.verifying_key()))
            .finish()
    }
}

/// Whether a key file was found or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from disk.
    Loaded,
    /// Created now.
    Created,
}

impl Keyring {
    /// Loads `dir/grant-signing.key` and `dir/audit-signing.key`, creating
    /// any that is missing. Returns the names of keys created.
    pub fn load_or_create(dir: &Path) -> Result<(Self, Vec<&'static str>), KeyError> {
        create_private_dir(dir)?;
        let mut created = Vec::new();
        let (grant, o) = load_or_create_key(&dir.join("grant-signing.key"))?;
        if o == Origin::Created {
            created.push("grant");
        }
        let (audit, o) = load_or_create_key(&dir.join("audit-signing.key"))?;
        if o == Origin::Created {
            created.push("audit");
        }
        Ok((Self { grant, audit }, created))
    }

    /// Reads the public halves of the keys in `dir` without creating any:
    /// for offline verification.
    pub fn load_public(dir: &Path) -> Result<PublicKeys, KeyError> {
        Ok(Self::load(dir)?.public())
    }

    /// Reads the keys in `dir` without creating any: for a tool that signs
    /// with the keys a server made (`airlock audit export`), where a key
    /// made on the spot would sign for a log it never kept.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        let read = |name: &str| -> Result<SigningKey, KeyError> {
            let path = dir.join(name);
            let text = Zeroizing::new(fs::read_to_string(&path).map_err(io(&path))?);
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), seed.as_mut())
                .map_err(|_| KeyError::Malformed(path.clone()))?;
            Ok(SigningKey::from_bytes(&seed))
        };
        Ok(Self {
            grant: read("grant-signing.key")?,
            audit: read("audit-signing.key")?,
        })
    }

    /// Replaces the audit signing key in `dir` with a new one and keeps
    /// the old public half as `audit-retired-<id>.pub`, so checkpoints it
    /// signed still verify. Returns `(old, new)`. Every node must be given
    /// the new key file before it starts again.
    pub fn rotate_audit(dir: &Path) -> Result<(PublicKey, PublicKey), KeyError> {
        let path = dir.join("audit-signing.key");
        let (old, origin) = load_or_create_key(&path)?;
        if origin == Origin::Created {
            return Err(KeyError::Io {
                path,
                source: std::io::Error::other("there was no audit key to rotate"),
            });
        }
        let old = PublicKey(old.verifying_key());
        let retired = dir.join(format!("audit-retired-{}.pub", old.id()));
        fs::write(&retired, format!("{}\n", old.paserk())).map_err(io(&retired))?;
        // The new key goes in beside, then over the old one in one rename,
        // so a crash leaves one whole key file, old or new.
        let staged = dir.join("audit-signing.key.new");
        let _ = fs::remove_file(&staged);
        let (new, _) = load_or_create_key(&staged)?;
        fs::rename(&staged, &path).map_err(io(&path))?;
        Ok((old, PublicKey(new.verifying_key())))
    }

    /// Every audit public key of `dir`: the current one first, then the
    /// retired ones (`audit-retired-*.pub`), for verifying checkpoints
    /// signed before a rotation.
    pub fn audit_keys(dir: &Path) -> Result<Vec<PublicKey>, KeyError> {
        let mut keys = vec![Self::load_public(dir)?.audit];
        let mut retired: Vec<PathBuf> = fs::read_dir(dir)
            .map_err(io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("audit-retired-") && n.ends_with(".pub"))
            })
            .collect();
        retired.sort();
        for p in retired {
            let text = fs::read_to_string(&p).map_err(io(&p))?;
            keys.push(PublicKey::parse(&text)?);
        }
        Ok(keys)
    }

    /// Fresh keys in memory, for tests and benchmarks.
    pub fn ephemeral() -> Self {
        let mut rng = rand::rngs::OsRng;
        Self {
            grant: SigningKey::generate(&mut rng),
            audit: SigningKey::generate(&mut rng),
        }
    }

    /// The public halves, for `/v1/keys` and offline verification.
    pub fn public(&self) -> PublicKeys {
        PublicKeys {
            grant: PublicKey(self.grant.verifying_key()),
            audit: PublicKey(self.audit.verifying_key()),
        }
    }
}

/// An Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub(crate) VerifyingKey);

impl PublicKey {
    /// Parses a PASERK `k4.public.…` or 64 hex digits.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        let bytes: Vec<u8> = if let Some(b64) = s.strip_prefix("k4.public.") {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64)
                .map_err(|e| KeyError::BadPublic(e.to_string()))?
        } else {
            hex::decode(s).map_err(|e| KeyError::BadPublic(e.to_string()))?
        };
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::BadPublic("must be 32 bytes".into()))?;
        VerifyingKey::from_bytes(&arr)
            .map(PublicKey)
            .map_err(|e| KeyError::BadPublic(e.to_string()))
    }

    /// PASERK form, `k4.public.<base64url>`.
    pub fn paserk(&self) -> String {
        format!(
            "k4.public.{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes())
        )
    }

    /// The key's 32 bytes, hex.
    pub fn hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    /// A short id: the first 8 bytes of the key, in hex.
    pub fn id(&self) -> String {
        key_id(&self.0)
    }
}

/// The public keys of a deployment, as `/v1/keys` serves them.
#[derive(Debug, Clone, Copy)]
pub struct PublicKeys {
    /// Verifies grant tokens.
    pub grant: PublicKey,
    /// Verifies audit checkpoints.
    pub audit: PublicKey,
}

fn key_id(k: &VerifyingKey) -> String {
    hex::encode(&k.as_bytes()[..8])
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir))?;
        }
    }
    #[cfg(not(unix))]
    fs::create_dir_all(dir).map_err(io(dir))?;
    Ok(())
}

fn load_or_create_key(path: &Path) -> Result<(SigningKey, Origin), KeyError> {
    let (seed, origin) = load_or_create_seed(path)?;
    Ok((SigningKey::from_bytes(&seed), origin))
}

/// 32 random bytes kept in `path` as hex, owner-only: an Ed25519 seed or a
/// symmetric key. Made if missing, never overwritten.
pub(crate) fn load_or_create_seed(path: &Path) -> Result<(Zeroizing<[u8; 32]>, Origin), KeyError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            check_private(path)?;
            let text = Zeroizing::new(text);
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), seed.as_mut())
                .map_err(|_| KeyError::Malformed(path.to_owned()))?;
            Ok((seed, Origin::Loaded))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut());
            let text = Zeroizing::new(format!("{}\n", hex::encode(seed.as_ref())));
            let mut opts = fs::OpenOptions::new();
            // create_new: two nodes starting at once never overwrite a key
            // the other already handed out grants under.
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            match opts.open(path) {
                Ok(mut f) => {
                    f.write_all(text.as_bytes()).map_err(io(path))?;
                    f.sync_all().map_err(io(path))?;
                    Ok((seed, Origin::Created))
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    load_or_create_seed(path)
                }
                Err(e) => Err(io(path)(e)),
            }
        }
        Err(e) => Err(io(path)(e)),
    }
}

fn check_private(path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions(path.to_owned(), mode));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_owner_only_then_reloads_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("keys");
        let (a, created) = Keyring::load_or_create(&kd).unwrap();
        assert_eq!(created, ["grant", "audit"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let m = fs::metadata(kd.join("grant-signing.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o777, 0o600);
            let m = fs::metadata(&kd).unwrap().permissions().mode();
            assert_eq!(m & 0o777, 0o700);
        }
        let (b, created) = Keyring::load_or_create(&kd).unwrap();
        assert!(created.is_empty());
        assert_eq!(a.public().grant, b.public().grant);
        assert_ne!(a.public().grant, a.public().audit);
    }

    #[cfg(unix)]
    #[test]
    fn refuses_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Keyring::load_or_create(dir.path()).unwrap();
        let p = dir.path().join("audit-signing.key");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Keyring::load_or_create(dir.path()),
            Err(KeyError::Permissions(..))
        ));
    }

    #[test]
    fn public_key_parses_both_forms() {
        let k = Keyring::ephemeral().public().grant;
        assert_eq!(PublicKey::parse(&k.paserk()).unwrap(), k);
        assert_eq!(PublicKey::parse(&hex::encode(k.0.as_bytes())).unwrap(), k);
        assert!(PublicKey::parse("k4.public.AAAA").is_err());
    }
}
