//! Commands that work on the files directly, without a server: keys,
//! audit verification, policy validation and tests.

use std::path::Path;
use std::process::ExitCode;

use airlock_core::{KeyLifetime, UserName};
use airlock_keys::Keyring;
use airlock_policy::{Directory, PolicyEngine};
use airlock_server::{service, Config};
use airlock_store::{verify_chain, KeyRevocation, ReadOnlyStore, Role, Store};
use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::Output;

pub async fn keys_create(
    config: &Path,
    user: &str,
    role: &str,
    expires_in: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let user = UserName::parse(user)?;
    let role =
        Role::parse(role).ok_or_else(|| anyhow!("role {role:?} is not user, enforcer or admin"))?;
    let lifetime = expires_in
        .map(KeyLifetime::parse)
        .transpose()
        .context("--expires-in")?;
    if !cfg.users.iter().any(|u| u.name == user) && role != Role::Enforcer {
        eprintln!(
            "note: {user} is not among the config's [[users]]: the server refuses this key \
             until they are added there"
        );
    }
    let store = Store::open_for_tool(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let (key, record) =
        service::create_api_key_with(&store, user.clone(), role, lifetime, "cli").await?;
    let role = match role.to_string() {
        // "a user": the sound, not the letter, takes the article.
        r if r.starts_with(['a', 'e', 'i', 'o']) => format!("an {r}"),
        r => format!("a {r}"),
    };
    match record.expires_at {
        Some(at) => eprintln!(
            "created {} ({role} key for {user}, expires {}); it is shown once:",
            record.id,
            airlock_store::time::fmt(at)
        ),
        None => eprintln!(
            "created {} ({role} key for {user}); it is shown once:",
            record.id
        ),
    }
    println!("{key}");
    Ok(ExitCode::SUCCESS)
}

/// A time for the `keys list` table: `-` when there is none.
fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(airlock_store::time::fmt)
        .unwrap_or_else(|| "-".to_owned())
}

pub async fn keys_list(config: &Path, out: Output) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let store = Store::open_for_tool(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let keys = service::list_api_keys(&store).await?;
    let now = airlock_store::time::now();
    if out.json {
        let rows: Vec<_> = keys
            .iter()
            .map(|k| {
                json!({
                    "id": k.id,
                    "user": k.user.as_str(),
                    "role": k.role.as_str(),
                    "created": airlock_store::time::fmt(k.created_at),
                    "last_used": k.last_used_at.map(airlock_store::time::fmt),
                    "expires": k.expires_at.map(airlock_store::time::fmt),
                    "revoked": k.revoked_at.map(airlock_store::time::fmt),
                    "active": k.refusal(now).is_none(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = keys
        .iter()
        .map(|k| {
            [
                k.id.clone(),
                k.user.to_string(),
                k.role.to_string(),
                airlock_store::time::fmt(k.created_at),
                when(k.last_used_at),
                when(k.expires_at),
                when(k.revoked_at),
            ]
        })
        .collect();
    let head = [
        "ID",
        "USER",
        "ROLE",
        "CREATED",
        "LAST USED",
        "EXPIRES",
        "REVOKED",
    ];
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(&head);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn keys_revoke(config: &Path, key_id: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let store = Store::open_for_tool(cfg.storage.url.as_str(), &cfg.base_dir)?;
    match service::revoke_api_key(&store, key_id, "cli").await? {
        KeyRevocation::Revoked => {
            eprintln!("revoked {key_id}: every node refuses it from now on");
            Ok(ExitCode::SUCCESS)
        }
        KeyRevocation::Unknown => {
            eprintln!("airlock: no API key has the id {key_id:?} (see `airlock keys list`)");
            Ok(ExitCode::from(1))
        }
        KeyRevocation::AlreadyRevoked(at) => {
            eprintln!(
                "airlock: {key_id} was already revoked at {}",
                airlock_store::time::fmt(at)
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// `airlock keys rotate-audit`: a new audit signing key, the old public
/// half kept beside it, the deployment's registry updated and the rotation
/// recorded, in one transaction.
pub async fn keys_rotate_audit(config: &Path) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let dir = cfg.data_dir().join("keys");
    let store = Store::open_for_tool(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let (old, new) = Keyring::rotate_audit(&dir)?;
    let (old_id, new_id) = (old.id(), new.id());
    let result = store
        .write(move |tx| {
            let now = airlock_store::time::now();
            tx.replace_signing_key("audit", &new.paserk(), now)?;
            tx.replace_signing_key(&format!("audit-retired-{}", old.id()), &old.paserk(), now)?;
            tx.append_audit(
                airlock_core::NewAuditRecord {
                    kind: airlock_core::AuditKind::KeyRotated,
                    actor: "cli".into(),
                    subject: "audit-signing-key".into(),
                    details: json!({
                        "use": "audit",
                        "old": old.id(), "old_public": old.paserk(),
                        "new": new.id(), "new_public": new.paserk(),
                    })
                    .into(),
                },
                now,
            )?;
            Ok::<_, airlock_store::StoreError>(())
        })
        .await;
    if let Err(e) = result {
        bail!(
            "the new audit key is in {} but the database was not updated ({e}); run the command again once the database is reachable",
            dir.display()
        );
    }
    eprintln!(
        "rotated the audit key: {old_id} → {new_id}; the old public key stays in {} so what it signed verifies. Copy {}/audit-signing.key to every node, then restart them.",
        dir.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Why the log failed, with the first bad sequence number.
struct Broken {
    /// The first record that fails, when one does (not for a checkpoint
    /// the whole log disagrees with).
    seq: Option<i64>,
    why: String,
}

/// The data directory's audit keys that the deployment's registry holds:
/// the current one, and each retired one `keys rotate-audit` registered. A
/// retired key file planted in `keys/` with no registry entry is not
/// trusted (found by a black-box pass: a note signed by a planted key
/// verified), and is named on standard error.
pub(crate) fn registered_audit_keys(
    db: &ReadOnlyStore,
    found: Vec<airlock_keys::PublicKey>,
) -> anyhow::Result<Vec<airlock_keys::PublicKey>> {
    let mut keys = Vec::with_capacity(found.len());
    for (i, key) in found.into_iter().enumerate() {
        if i == 0 {
            keys.push(key);
            continue;
        }
        let purpose = format!("audit-retired-{}", key.id());
        let registered = db.read(move |r| r.signing_key(&purpose))?;
        if registered.as_deref().map(str::trim) == Some(key.paserk().as_str()) {
            keys.push(key);
        } else {
            eprintln!(
                "ignoring the retired audit key {} in the keys folder: the deployment's registry does not hold it",
                key.id()
            );
        }
    }
    Ok(keys)
}

pub fn audit_verify(
    config: &Path,
    public_key: Option<&str>,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let db = ReadOnlyStore::new(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let keys = match public_key {
        Some(k) => crate::audit::public_keys(k)?,
        None => {
            let found = Keyring::audit_keys(&cfg.data_dir().join("keys"))
                .context("reading the audit public keys (or pass --public-key)")?;
            registered_audit_keys(&db, found)?
        }
    };
    let chain_keys = keys.clone();
    let found = db.read(move |r| verify_chain(r, &chain_keys))?;
    let (head, hash, n_cp) = (found.head, found.head_hash, found.checkpoints);
    let mut broken = found.broken.map(|(seq, why)| Broken {
        seq: Some(seq),
        why,
    });
    // The Merkle tree against every checkpoint in the store and in the
    // witness folders: a log shorter than, or diverging from, any of them
    // fails, naming it.
    let mut tree_checkpoints = 0;
    let mut covered = 0;
    if broken.is_none() {
        match crate::audit::verify_tree(&cfg, &keys)? {
            Ok(check) => {
                tree_checkpoints = check.checkpoints();
                covered = check.covered();
            }
            // A checkpoint the log disagrees with names no one record.
            Err(why) => broken = Some(Broken { seq: None, why }),
        }
    }
    let unwitnessed = u64::try_from(head).unwrap_or(0).saturating_sub(covered);
    match broken {
        None => {
            if out.json {
                println!(
                    "{}",
                    json!({"ok": true, "records": head, "head_hash": hash.to_string(), "checkpoints": n_cp, "tree_checkpoints": tree_checkpoints, "proven": head == 0 || n_cp + tree_checkpoints > 0, "unwitnessed": unwitnessed})
                );
            } else if n_cp + tree_checkpoints == 0 && head > 0 {
                // Consistent, but no signature vouches for it yet: say so
                // rather than "verified" (the server signs one every
                // `[audit] checkpoint_interval_seconds` and when it stops).
                println!(
                    "audit log chain verified: {head} records, head {hash}; no signed checkpoint yet, so nothing is proven to an outsider"
                );
            } else {
                println!(
                    "audit log verified: {head} records, {n_cp} signed checkpoints, {tree_checkpoints} tree checkpoints, head {hash}"
                );
                if unwitnessed > 0 {
                    // Records after the newest tree checkpoint are as the
                    // database holds them: anyone who can write it could
                    // have added them (the chain is not a signature).
                    println!(
                        "{unwitnessed} records after the newest tree checkpoint ({covered} records) are not covered by one yet"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(b) => {
            if out.json {
                println!(
                    "{}",
                    json!({"ok": false, "first_bad_seq": b.seq, "error": b.why})
                );
            } else {
                match b.seq {
                    Some(seq) => {
                        eprintln!("audit log FAILED verification at record {seq}: {}", b.why)
                    }
                    None => eprintln!("audit log FAILED verification: {}", b.why),
                }
            }
            Ok(ExitCode::from(1))
        }
    }
}

pub fn policy_validate(dir: &Path, config: Option<&Path>) -> anyhow::Result<ExitCode> {
    let directory = match config {
        Some(c) => Config::load(c)?.directory(),
        None => Directory::default(),
    };
    match PolicyEngine::load(dir, &directory) {
        Ok(engine) => {
            println!(
                "ok: {} policies, version {}",
                engine.policy_count(),
                engine.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

pub fn policy_test(file: &Path) -> anyhow::Result<ExitCode> {
    let report = airlock_policy::cases::run_file(file)?;
    print!("{}", report.text);
    if report.failed > 0 {
        return Ok(ExitCode::from(1));
    }
    if report.passed == 0 {
        bail!("{} has no cases", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Shortest password accepted for the web console.
const MIN_PASSWORD: usize = 8;

/// `airlock users totp enroll`: a fresh TOTP secret for a user, sealed in
/// the store, and its otpauth URI printed for their authenticator.
pub async fn users_totp_enroll(config: &Path, user: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let user = UserName::parse(user)?;
    if !cfg.users.iter().any(|u| u.name == user) {
        bail!("{user} is not among the [[users]] of {}", config.display());
    }
    let secrets = airlock_keys::SecretBox::load_or_create(&cfg.data_dir().join("keys"))
        .context("reading the secrets key")?;
    let secret = airlock_auth::totp::new_secret();
    let uri = airlock_auth::totp::uri(&secret, user.as_str())?;
    let sealed = secrets.seal(&secret, user.as_str());
    let store = Store::open_for_tool(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let name = user.clone();
    store
        .write(move |tx| {
            let t = airlock_store::time::now();
            tx.set_totp_secret(&name, &sealed, t)?;
            tx.append_audit(
                airlock_core::NewAuditRecord {
                    kind: airlock_core::AuditKind::TotpEnrolled,
                    actor: "cli".into(),
                    subject: name.to_string(),
                    details: json!({"user": name.as_str()}).into(),
                },
                t,
            )?;
            Ok::<_, airlock_store::StoreError>(())
        })
        .await?;
    println!("{uri}");
    eprintln!("TOTP enrolled for {user}: add the URI above to their authenticator app (it replaces any earlier enrolment)");
    Ok(ExitCode::SUCCESS)
}

pub async fn users_set_password(config: &Path, user: &str) -> anyhow::Result<ExitCode> {
    use std::io::Read;

    let cfg = Config::load(config)?;
    let user = UserName::parse(user)?;
    if !cfg.users.iter().any(|u| u.name == user) {
        bail!("{user} is not among the [[users]] of {}", config.display());
    }
    let mut password = String::new();
    std::io::stdin()
        .read_to_string(&mut password)
        .context("reading the password from standard input")?;
    // One trailing newline is the terminal's, not the password's.
    let password = password
        .strip_suffix('\n')
        .map(|p| p.strip_suffix('\r').unwrap_or(p))
        .unwrap_or(&password);
    if password.chars().count() < MIN_PASSWORD {
        bail!("the password must be at least {MIN_PASSWORD} characters");
    }
    let hash = airlock_auth::password::hash_password(password)
        .map_err(|e| anyhow!("hashing the password: {e}"))?;
    let store = Store::open_for_tool(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let name = user.clone();
    store
        .write(move |tx| {
            let t = airlock_store::time::now();
            tx.set_password_hash(&name, &hash, t)?;
            tx.append_audit(
                airlock_core::NewAuditRecord {
                    kind: airlock_core::AuditKind::PasswordSet,
                    actor: "cli".into(),
                    subject: name.to_string(),
                    details: json!({"user": name.as_str(), "scheme": "argon2id"}).into(),
                },
                t,
            )?;
            Ok::<_, airlock_store::StoreError>(())
        })
        .await?;
    eprintln!("password set for {user}");
    Ok(ExitCode::SUCCESS)
}
