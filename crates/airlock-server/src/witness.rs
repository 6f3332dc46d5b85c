//! Witnesses. Folders: every tree checkpoint is written as a file of its own,
//! never overwritten, to each `[audit] witness_dir`, and read back by
//! `airlock audit verify --config`. A folder the database's owner cannot
//! rewrite keeps a log from being cut short or rolled back unnoticed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The file a checkpoint goes to: the origin (with anything but letters,
/// digits, `.` and `-` made `_`) and the size, zero-padded so the files
/// sort by size.
pub fn file_name(origin: &str, size: u64) -> String {
    let safe: String = origin
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{size:020}.note")
}

/// Writes `note` to `dir` unless a note for that size is already there
/// (the same note again is fine; another one is an error, never an
/// overwrite).
pub fn write(dir: &Path, origin: &str, size: u64, note: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file_name(origin, size));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(mut f) => {
            f.write_all(note.as_bytes())?;
            f.sync_all()
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_to_string(&path)? == note {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "{} already holds another checkpoint of size {size}",
                    path.display()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

/// The newest checkpoint of `origin` in `dir` (the largest size its file
/// name gives), read; `None` when there is none.
pub fn newest(dir: &Path, origin: &str) -> std::io::Result<Option<String>> {
    // Sizes are zero-padded: the greatest name is the largest size.
    let zero = file_name(origin, 0);
    let prefix = zero
        .strip_suffix(&format!("{:020}.note", 0))
        .unwrap_or(&zero);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut newest: Option<String> = None;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        // Exactly this origin's: `host/audit` must not take the file of
        // an origin `host/audit-eu` (whose name shares the prefix).
        let ours = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(".note"))
            .is_some_and(|size| size.len() == 20 && size.bytes().all(|b| b.is_ascii_digit()));
        if ours && newest.as_ref().is_none_or(|n| name > *n) {
            newest = Some(name);
        }
    }
    newest
        .map(|n| std::fs::read_to_string(dir.join(n)))
        .transpose()
}

/// The notes in a witness file's `text`: one, or several appended one
/// after another (a witness kept as one append-only file). Lines after a
/// note's signatures that are not signatures begin the next note, so junk
/// there is a note that does not open, never skipped (only the first note
/// of such a file was read, so a rollback past the others went unseen;
/// found by a black-box pass).
pub fn notes_in(text: &str) -> Vec<String> {
    let mut notes = Vec::new();
    let mut note = String::new();
    let mut in_signatures = false;
    for line in text.split_inclusive('\n') {
        // Blank lines between appended notes (`cat a b; echo`) are layout.
        if (in_signatures || note.is_empty()) && line.trim().is_empty() {
            continue;
        }
        if in_signatures && !line.starts_with("\u{2014} ") {
            notes.push(std::mem::take(&mut note));
            in_signatures = false;
        }
        if !in_signatures && line == "\n" && !note.is_empty() {
            in_signatures = true;
        }
        note.push_str(line);
    }
    // An empty file is one note that does not open, not none.
    if !note.is_empty() || notes.is_empty() {
        notes.push(note);
    }
    notes
}

/// The largest witness file read: about 200,000 notes appended.
pub const MAX_NOTE_FILE: u64 = 64 << 20;

/// Every `*.note` file in `dir`, with its path, sorted by name.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "note") {
            // A pipe or device named `*.note` would hang the reader (in
            // `open` already, for a pipe) or never end.
            let meta = std::fs::metadata(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            if !meta.is_file() {
                return Err(std::io::Error::other(format!(
                    "{} is not a regular file",
                    path.display()
                )));
            }
            // A note is a few hundred bytes; a file of appended ones stays
            // far below this. Larger is refused, not read into memory.
            if meta.len() > MAX_NOTE_FILE {
                return Err(std::io::Error::other(format!(
                    "{} is larger than {MAX_NOTE_FILE} bytes: not a witness file",
                    path.display()
                )));
            }
            out.push((path.clone(), std::fs::read_to_string(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

/// What each C2SP witness (`witness_url`) last acknowledged, by URL, in
/// memory: unknown after a restart, which the witness corrects with 409
/// and its size.
#[derive(Debug, Default)]
pub struct Witnessed {
    sizes: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

/// Why a witness did not take a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// Unreachable or failing.
    #[error("{0}")]
    Transport(String),
    /// It answered something else than the protocol allows.
    #[error("answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
}

impl Witnessed {
    /// The size `url` last acknowledged (0: none known).
    pub fn size(&self, url: &str) -> u64 {
        self.sizes
            .lock()
            .map(|m| m.get(url).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn set(&self, url: &str, size: u64) {
        if let Ok(mut m) = self.sizes.lock() {
            m.insert(url.to_owned(), size);
        }
    }
}

/// The body of a C2SP `add-checkpoint` request.
pub fn add_checkpoint_body(old: u64, proof: &[[u8; 32]], note: &str) -> String {
    use base64::Engine as _;
    let mut body = format!("old {old}\n");
    for h in proof {
        body.push_str(&base64::engine::general_purpose::STANDARD.encode(h));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// Sends `note` (a checkpoint of `size`) to the witness at `url`, with the
/// consistency proof (from `store`) from what it last acknowledged; on
/// 409 (it knows another size) once more from the size it names. Returns
/// its cosignature lines.
pub async fn send(
    http: &reqwest::Client,
    witnessed: &Witnessed,
    url: &str,
    size: u64,
    note: &str,
    store: &airlock_store::Store,
) -> Result<String, WitnessError> {
    let endpoint = format!("{}/add-checkpoint", url.trim_end_matches('/'));
    let mut old = witnessed.size(url);
    for _ in 0..2 {
        if old > size {
            return Err(WitnessError::Refused {
                status: 409,
                body: format!("the witness has seen {old} records; this log has {size}"),
            });
        }
        let proof = if old == 0 || old == size {
            Vec::new()
        } else {
            store
                .read(move |r| {
                    let mut nodes = |l: u32, i: u64| r.audit_tree_node(l, i).ok().flatten();
                    Ok::<_, airlock_store::StoreError>(
                        airlock_core::merkle::consistency_proof(&mut nodes, old, size).ok(),
                    )
                })
                .await
                .ok()
                .flatten()
                .ok_or_else(|| WitnessError::Transport("no consistency proof".into()))?
        };
        let res = http
            .post(&endpoint)
            .body(add_checkpoint_body(old, &proof, note))
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| WitnessError::Transport(e.to_string()))?;
        let status = res.status().as_u16();
        let body = res.text().await.unwrap_or_default();
        match status {
            200 => {
                witnessed.set(url, size);
                return Ok(body);
            }
            409 => match body.trim().parse::<u64>() {
                Ok(theirs) => old = theirs,
                Err(_) => return Err(WitnessError::Refused { status, body }),
            },
            _ => return Err(WitnessError::Refused { status, body }),
        }
    }
    Err(WitnessError::Refused {
        status: 409,
        body: "the witness's size kept changing".into(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A witness file past the cap, a pipe or a dangling link is refused,
    /// naming it, not read into memory, waited on or skipped.
    #[test]
    fn what_is_not_a_witness_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.note");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_NOTE_FILE + 1)
            .unwrap();
        let e = read_all(dir.path()).unwrap_err().to_string();
        assert!(e.contains("big.note") && e.contains("larger"), "{e}");
        std::fs::remove_file(&big).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", dir.path().join("gone.note")).unwrap();
        let e = read_all(dir.path()).unwrap_err().to_string();
        assert!(e.contains("gone.note"), "{e}");
    }
}
