//! The quickstart: `airlock serve` with no config writes the bundled example
//! (examples/quickstart) to `.airlock/`, and makes API keys for its users so
//! the loop can be tried from a second terminal at once.

use std::path::{Path, PathBuf};

use airlock_core::UserName;
use airlock_store::{Role, Store};
use serde::{Deserialize, Serialize};

use crate::service::create_api_key;

/// The files of the bundled example, by path under `.airlock/`.
const FILES: [(&str, &str); 4] = [
    (
        "airlock.toml",
        include_str!("../../../examples/quickstart/airlock.toml"),
    ),
    (
        "policies/quickstart.cedar",
        include_str!("../../../examples/quickstart/policies/quickstart.cedar"),
    ),
    (
        "policies/entities.json",
        include_str!("../../../examples/quickstart/policies/entities.json"),
    ),
    (
        "policies/tests.toml",
        include_str!("../../../examples/quickstart/policies/tests.toml"),
    ),
];

/// Users the quickstart makes keys for, with their roles.
const KEYS: [(&str, Role); 6] = [
    ("admin", Role::Admin),
    ("alice", Role::User),
    ("bob", Role::User),
    ("carol", Role::User),
    ("dave", Role::User),
    ("erin", Role::User),
];

/// The quickstart's keys, kept (owner-only) so a restart prints the same.
#[derive(Debug, Serialize, Deserialize)]
pub struct Credentials {
    /// `(user, key)` pairs.
    pub keys: Vec<(String, String)>,
}

impl Credentials {
    /// The key of `user`.
    pub fn key(&self, user: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, k)| k.as_str())
    }
}

/// Writes the example into `dir` (keeping any file already there) and
/// returns the config file's path.
pub fn prepare(dir: &Path) -> std::io::Result<PathBuf> {
    create_private_dir(dir)?;
    for (rel, text) in FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if !path.exists() {
            std::fs::write(&path, text)?;
        }
    }
    Ok(dir.join("airlock.toml"))
}

/// Loads the quickstart's keys, making them on first start.
pub async fn credentials(dir: &Path, store: &Store) -> Result<Credentials, String> {
    let path = dir.join("credentials.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(c) = serde_json::from_str::<Credentials>(&text) {
            return Ok(c);
        }
    }
    let mut keys = Vec::new();
    for (user, role) in KEYS {
        let name = UserName::parse(user).map_err(|e| e.to_string())?;
        let key = create_api_key(store, name, role, "quickstart")
            .await
            .map_err(|e| e.to_string())?;
        keys.push((user.to_owned(), key));
    }
    let creds = Credentials { keys };
    let text = serde_json::to_string_pretty(&creds).map_err(|e| e.to_string())?;
    write_private(&path, &text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(creds)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_example_loads_and_its_cases_pass() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = prepare(&dir.path().join(".airlock")).unwrap();
        let cfg = crate::Config::load(&cfg_path).unwrap();
        airlock_policy::PolicyEngine::load(&cfg.policy_dir(), &cfg.directory()).unwrap();
        let report = airlock_policy::cases::run_file(&cfg.policy_dir().join("tests.toml")).unwrap();
        assert_eq!(report.failed, 0, "{}", report.text);
        assert!(report.passed >= 9);
    }
}
