//! Witness folders: every tree checkpoint is written as a file of its own,
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

/// Every `*.note` file in `dir`, with its path, sorted by name.
pub fn read_all(dir: &Path) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "note") {
            out.push((path.clone(), std::fs::read_to_string(&path)?));
        }
    }
    out.sort();
    Ok(out)
}
