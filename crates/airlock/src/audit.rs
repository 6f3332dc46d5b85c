//! `airlock audit export | verify | prove`: the audit log as an auditor
//! gets it (one line per record, the tree checkpoints, the public key),
//! checked with no database and no config, and the Merkle tree checked
//! against every checkpoint found in the store and in the witness folders.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

use airlock_core::merkle::{self, Frontier};
use airlock_core::{AuditRecord, ChainVerifier};
use airlock_keys::{open_note_any, Keyring, PublicKey, TreeHead};
use airlock_server::{witness, Config};
use airlock_store::ReadOnlyStore;
use anyhow::{bail, Context};
use base64::Engine as _;
use serde_json::json;

use crate::Output;

/// Bytes of an export read, and checked in parallel, at once.
const CHUNK: usize = 16 * 1024 * 1024;
/// The longest line an export is read to: far past any record Airlock
/// writes (a statement's text is at most 1 MiB).
const MAX_LINE: usize = 64 * 1024 * 1024;

/// The chain and the tree of a log, built one record at a time, and the
/// checkpoints checked against them. The checkpoints are opened first, so
/// the tree is kept only as its right edge and its root taken at each
/// size a checkpoint names: memory stays small for a log of any length.
#[derive(Default)]
pub struct LogCheck {
    chain: ChainVerifier,
    tree: Frontier,
    records: u64,
    /// Every checkpoint, by the size it covers: its label and root.
    heads: BTreeMap<u64, Vec<(String, merkle::Hash)>>,
    /// The log's root at each of those sizes, once reached.
    roots: BTreeMap<u64, merkle::Hash>,
    /// The next size in `heads` not yet reached.
    next_size: Option<u64>,
    /// One list of checked lines per thread, kept between chunks so a
    /// large log does not map fresh memory for every chunk.
    scratch: Vec<Vec<Checked>>,
}

impl LogCheck {
    /// A check against these checkpoint notes (label, note), each of which
    /// must be signed by one of `keys`.
    pub fn new(notes: &[(String, String)], keys: &[PublicKey]) -> Result<Self, String> {
        let mut heads: BTreeMap<u64, Vec<(String, merkle::Hash)>> = BTreeMap::new();
        for (label, note) in notes {
            let head = open_note_any(note, keys).map_err(|e| format!("checkpoint {label}: {e}"))?;
            heads
                .entry(head.size)
                .or_default()
                .push((label.clone(), head.root));
        }
        let mut check = Self {
            heads,
            ..Self::default()
        };
        check.take_roots();
        Ok(check)
    }

    /// How many checkpoints there are.
    pub fn checkpoints(&self) -> usize {
        self.heads.values().map(Vec::len).sum()
    }

    /// How many records the newest tree checkpoint covers (0 with none).
    pub fn covered(&self) -> u64 {
        self.heads.keys().next_back().copied().unwrap_or(0)
    }

    /// Keeps the root if a checkpoint covers exactly the records so far.
    fn take_roots(&mut self) {
        if self.heads.contains_key(&self.records) {
            self.roots.insert(self.records, self.tree.root());
        }
        self.next_size = self
            .heads
            .range(self.records + 1..)
            .next()
            .map(|(size, _)| *size);
    }

    /// Records, as export lines ending in `\n`, in order. What each line
    /// says about itself (it parses, is in export form, hashes to its
    /// `hash`, and its leaf hash) is worked out on every core at once, each
    /// taking a run of whole lines; only the links between records and the
    /// tree are walked in order.
    pub fn push_text(&mut self, text: &str) -> Result<(), String> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16);
        let mut parts = Vec::with_capacity(threads);
        let mut rest = text;
        for left in (1..=threads).rev() {
            let want = rest.len() / left;
            let cut = match rest.as_bytes().get(want..) {
                Some(after) if left > 1 => after
                    .iter()
                    .position(|b| *b == b'\n')
                    .map_or(rest.len(), |p| want + p + 1),
                _ => rest.len(),
            };
            let (part, after) = rest.split_at(cut);
            parts.push(part);
            rest = after;
        }
        self.scratch.resize_with(threads, Vec::new);
        let failed: Vec<Option<String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = parts
                .iter()
                .zip(self.scratch.iter_mut())
                .map(|(part, out)| {
                    scope.spawn(move || {
                        out.clear();
                        // Lines end at `\n` alone, as RFC 6962 leaves are
                        // the bytes of a line: a `\r` before it is part of
                        // the line (and no record), where `lines()` dropped
                        // it, so a CRLF copy verified with roots no
                        // independent verifier would compute.
                        for line in part.split_terminator('\n') {
                            match check_line(line) {
                                Ok(c) => out.push(c),
                                Err(e) => return Some(e),
                            }
                        }
                        None
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Some("a verifier thread failed".to_owned()))
                })
                .collect()
        });
        let scratch = std::mem::take(&mut self.scratch);
        let walked = self.walk(&scratch, failed);
        self.scratch = scratch;
        walked
    }

    /// The in-order part: links, tree, and the first failure.
    fn walk(
        &mut self,
        checked: &[Vec<Checked>],
        failed: Vec<Option<String>>,
    ) -> Result<(), String> {
        for (done, failed) in checked.iter().zip(failed) {
            for c in done {
                self.chain
                    .push_checked(c.seq, c.prev, c.hash, c.content_ok)
                    .map_err(|e| e.to_string())?;
                self.tree.push(c.leaf);
                self.records += 1;
                if self.next_size == Some(self.records) {
                    self.take_roots();
                }
            }
            // A thread stops at its first bad line: it is the next record.
            if let Some(why) = failed {
                return Err(format!("record {}: {why}", self.records + 1));
            }
        }
        Ok(())
    }

    /// The last record is under a signed checkpoint, and so, by the tree,
    /// is every one before it. Records past the newest checkpoint, or a
    /// log with none, are proven by nothing: whoever holds the file could
    /// have appended or rewritten them, hash chain and all.
    pub fn all_signed(&self) -> Result<(), String> {
        match self.heads.keys().next_back() {
            None => Err(format!(
                "no signed checkpoint: nothing in the {} records is proven by the public key (`airlock audit export` signs one for the last record)",
                self.records
            )),
            Some(&size) if size < self.records => Err(format!(
                "records {} to {} are under no signed checkpoint (the newest covers {size}): anyone could have added them",
                size + 1,
                self.records
            )),
            Some(_) => Ok(()),
        }
    }

    /// After the last record: every checkpoint covers no more than the log
    /// and has the log's root at its size.
    pub fn finish(&self) -> Result<(), String> {
        for (size, heads) in &self.heads {
            for (label, root) in heads {
                let Some(ours) = self.roots.get(size) else {
                    return Err(format!(
                        "checkpoint {label} (size {size}) covers more than the log's {} records: records were cut off or an older copy restored",
                        self.records
                    ));
                };
                if ours != root {
                    return Err(format!(
                        "the log diverges from checkpoint {label} (size {size}): a record up to there was changed"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What one line says about itself.
struct Checked {
    seq: i64,
    prev: airlock_core::ChainHash,
    hash: airlock_core::ChainHash,
    content_ok: bool,
    leaf: merkle::Hash,
}

fn check_line(line: &str) -> Result<Checked, String> {
    if let Some(read) = AuditRecord::read_export_line(line) {
        return Ok(Checked {
            seq: read.seq,
            prev: read.prev_hash,
            hash: read.hash,
            content_ok: true,
            leaf: merkle::leaf_hash(line.as_bytes()),
        });
    }
    // Not the common case: say what is wrong, or accept a record written
    // before details were stored canonically.
    let rec: AuditRecord = serde_json::from_str(line).map_err(|e| format!("not a record ({e})"))?;
    if rec.export_line() != line {
        return Err("not in export form (changed or re-encoded)".to_owned());
    }
    Ok(Checked {
        seq: rec.seq,
        prev: rec.prev_hash,
        hash: rec.hash,
        content_ok: rec.content_matches(),
        leaf: merkle::leaf_hash(line.as_bytes()),
    })
}

fn report(out: &Output, check: &LogCheck, result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => {
            let root = hex::encode(check.tree.root());
            let checkpoints = check.checkpoints();
            if out.json {
                println!(
                    "{}",
                    json!({"ok": true, "records": check.records, "checkpoints": checkpoints, "root": root})
                );
            } else {
                println!(
                    "audit log verified: {} records, chain and Merkle tree, {checkpoints} tree checkpoints, root {root}",
                    check.records
                );
            }
            ExitCode::SUCCESS
        }
        Err(why) => {
            if out.json {
                println!("{}", json!({"ok": false, "error": why}));
            } else {
                eprintln!("audit log FAILED verification: {why}");
            }
            ExitCode::from(1)
        }
    }
}

/// `airlock audit verify --dir DIR --public-key FILE`: an export, with no
/// database and no config.
pub fn verify_dir(dir: &Path, key: &str, out: Output) -> anyhow::Result<ExitCode> {
    let keys = public_keys(key)?;
    // A device or a pipe has no end to read to (`/dev/zero` grew the
    // buffer until memory ran out; a FIFO hung, already in `open`).
    let path = dir.join("records.jsonl");
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let file = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    // No checkpoints folder: none; one that cannot be read whole: said, not
    // taken as none.
    let folder = dir.join("checkpoints");
    let read = match witness::read_all(&folder) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !folder.exists() => Vec::new(),
        r => r.with_context(|| format!("reading {}", folder.display()))?,
    };
    // Every note in each file, as `--config` reads witness files: what
    // follows a note in its file is checked, not ignored.
    let notes: Vec<(String, String)> = read
        .into_iter()
        .flat_map(|(path, text)| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            notes_labelled(&name, &text)
        })
        .collect();
    let mut check = LogCheck::default();
    let result = (|| {
        check = LogCheck::new(&notes, &keys)?;
        // Read in large chunks and check the whole lines in each as slices
        // of it: no allocation per line.
        let mut file = file;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut at_end = false;
        while !at_end {
            let start = buf.len();
            buf.resize(CHUNK.max(start * 2), 0);
            let n = std::io::Read::read(&mut file, &mut buf[start..]).map_err(|e| e.to_string())?;
            buf.truncate(start + n);
            at_end = n == 0;
            let end = if at_end {
                buf.len()
            } else {
                match buf.iter().rposition(|b| *b == b'\n') {
                    Some(i) => i + 1,
                    None if buf.len() > MAX_LINE => {
                        return Err(format!(
                            "record {}: more than {MAX_LINE} bytes without a line end",
                            check.records + 1
                        ))
                    }
                    None => continue,
                }
            };
            let text = std::str::from_utf8(&buf[..end]).map_err(|e| {
                // The chunk holds many lines: name the one at fault.
                let before = buf[..e.valid_up_to()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                format!("record {}: not UTF-8", check.records + before as u64 + 1)
            })?;
            check.push_text(text)?;
            buf.drain(..end);
        }
        check.finish()?;
        check.all_signed()
    })();
    Ok(report(&out, &check, result))
}

/// `--public-key`: a file holding the keys (one per line: the current
/// audit key, then those it replaced), or one key itself (PASERK or hex).
pub fn public_keys(arg: &str) -> anyhow::Result<Vec<PublicKey>> {
    let path = Path::new(arg);
    let text = if path.is_file() {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    } else if PublicKey::parse(arg.trim()).is_err() {
        // Most likely a mistyped path: say that, not why it is no key.
        bail!("--public-key {arg}: no such file, and not a key (PASERK or 64 hex digits)");
    } else {
        arg.to_owned()
    };
    let keys = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| PublicKey::parse(l).context("--public-key"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if keys.is_empty() {
        bail!("--public-key: no key");
    }
    Ok(keys)
}

/// The tree part of `airlock audit verify --config`: the records from the
/// database, checked against the checkpoints in the store and in every
/// witness folder.
pub fn verify_tree(cfg: &Config, keys: &[PublicKey]) -> anyhow::Result<Result<LogCheck, String>> {
    let db = ReadOnlyStore::new(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let (chunks, notes) = db.read(|r| {
        let mut chunks = Vec::new();
        let mut after = 0;
        loop {
            let page = r.audit_after(after, 10_000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut text = String::new();
            for rec in &page {
                text.push_str(&rec.export_line());
                text.push('\n');
            }
            chunks.push(text);
        }
        Ok::<_, airlock_store::StoreError>((chunks, r.audit_notes()?))
    })?;
    let result = (|| {
        let mut check = LogCheck::new(&labelled_notes(cfg, &notes)?, keys)?;
        for text in &chunks {
            check.push_text(text)?;
        }
        check.finish()?;
        kept_tree_matches(&db, &check)?;
        Ok(check)
    })();
    Ok(result)
}

/// `airlock audit export --config FILE --out DIR`.
pub fn export(config: &Path, dir: &Path, format: &str) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let keys_dir = cfg.data_dir().join("keys");
    let db = ReadOnlyStore::new(cfg.storage.url.as_str(), &cfg.base_dir)?;
    // As `verify --config`: a planted retired key is neither trusted nor
    // handed to outsiders in the export's `public-key`.
    let keys = crate::admin::registered_audit_keys(
        &db,
        Keyring::audit_keys(&keys_dir).context("reading the audit public keys")?,
    )?;
    std::fs::create_dir_all(dir.join("checkpoints"))?;
    let name = match format {
        "jsonl" => "records.jsonl",
        "ocsf" => "records.ocsf.jsonl",
        other => bail!("--format {other:?}: jsonl or ocsf"),
    };
    // The checkpoints first: records only grow, so each then covers no
    // more than the records read after it, unless the log was cut.
    let stored = db.read(|r| r.audit_notes())?;
    // The records are checked as they are written, as `verify --config`
    // would: the export signs nothing the log's own checks refuse.
    let mut check = labelled_notes(&cfg, &stored).and_then(|l| LogCheck::new(&l, &keys));
    let mut w = BufWriter::new(std::fs::File::create(dir.join(name))?);
    let mut after = 0;
    let mut n = 0u64;
    let mut text = String::new();
    loop {
        let page = db.read(move |r| r.audit_after(after, 10_000))?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        text.clear();
        for rec in &page {
            text.push_str(&rec.export_line());
            text.push('\n');
            if format == "ocsf" {
                w.write_all(ocsf(rec).to_string().as_bytes())?;
                w.write_all(b"\n")?;
            }
            n += 1;
        }
        if format == "jsonl" {
            w.write_all(text.as_bytes())?;
        }
        if let Ok(c) = &mut check {
            if let Err(why) = c.push_text(&text) {
                check = Err(why);
            }
        }
    }
    w.flush()?;
    let verified = check.and_then(|c| {
        c.finish()?;
        kept_tree_matches(&db, &c)
    });
    let mut notes: Vec<(u64, String)> = stored
        .into_iter()
        .filter_map(|(size, note)| u64::try_from(size).ok().map(|s| (s, note)))
        .collect();
    let origin = cfg.audit_origin();
    let mut refused = None;
    // The records after the server's last checkpoint would otherwise be
    // proven by nothing, and `verify --dir` refuses an unsigned tail: the
    // export signs the tree it wrote, with the log's own key, when that
    // tree is the one the log itself keeps (the server signs the root of
    // its stored tree, built as each record was appended) and the log
    // passes its checks against every stored and witnessed checkpoint.
    if format == "jsonl" && n > 0 && notes.last().is_none_or(|(size, _)| *size != n) {
        match verified.clone() {
            Ok(root) => {
                let keyring = Keyring::load(&keys_dir)
                    .context("reading the audit signing key to sign the export's checkpoint")?;
                if keys.first() != Some(&keyring.public().audit) {
                    bail!("the audit key changed while exporting; export again");
                }
                let note = keyring.sign_note(&TreeHead {
                    origin: origin.clone(),
                    size: n,
                    root,
                });
                // Witnessed like the server's own: a later export, or the
                // server, signing another history of this size then
                // collides with it (signatures are deterministic, so the
                // same history signed again is the same note).
                let mut conflict = None;
                for wdir in cfg.witness_dirs() {
                    match witness::write(&wdir, &origin, n, &note) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Other => conflict = Some(e),
                        Err(e) => eprintln!(
                            "could not write the export's checkpoint to witness folder {}: {e}",
                            wdir.display()
                        ),
                    }
                }
                match conflict {
                    None => notes.push((n, note)),
                    Some(e) => refused = Some(format!("{e}: this log was rewritten")),
                }
            }
            Err(why) => refused = Some(why),
        }
    }
    // Signed or not, a log that fails its checks fails the export.
    if let (None, Err(why)) = (&refused, &verified) {
        refused = Some(why.clone());
    }
    for (size, note) in &notes {
        let path = dir
            .join("checkpoints")
            .join(witness::file_name(&origin, *size));
        std::fs::write(path, note)?;
    }
    // The current key first, then those it replaced: checkpoints signed
    // before a rotation verify too.
    let keys_text: String = keys.iter().map(|k| format!("{}\n", k.paserk())).collect();
    std::fs::write(dir.join("public-key"), keys_text)?;
    if format == "jsonl" {
        eprintln!(
            "exported {n} records and {} checkpoints to {} (verify: airlock audit verify --dir {} --public-key {}/public-key)",
            notes.len(),
            dir.display(),
            dir.display(),
            dir.display()
        );
    } else {
        eprintln!("exported {n} records to {}", dir.join(name).display());
    }
    if let Some(why) = refused {
        eprintln!("the log FAILED its checks, so no checkpoint was signed for this export: {why}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The checkpoints a log is checked against, labelled for errors: those
/// in the store (`stored`, by size) and those in every witness folder.
fn labelled_notes(cfg: &Config, stored: &[(i64, String)]) -> Result<Vec<(String, String)>, String> {
    let mut labelled: Vec<(String, String)> = stored
        .iter()
        .map(|(size, note)| (format!("in the store at size {size}"), note.clone()))
        .collect();
    for dir in cfg.witness_dirs() {
        // A folder not made yet (no checkpoint written to it) holds no
        // note, as an empty one does. Only the folder itself: a note that
        // cannot be read (a dangling link) fails, not empties the folder.
        if matches!(std::fs::symlink_metadata(&dir), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        {
            // Said, so a witness folder unmounted or removed is not
            // mistaken for one checked.
            eprintln!(
                "note: witness folder {} does not exist (yet); no note read from it",
                dir.display()
            );
            continue;
        }
        let found = witness::read_all(&dir)
            .map_err(|e| format!("witness folder {}: {e}", dir.display()))?;
        for (path, text) in found {
            labelled.extend(notes_labelled(&path.display().to_string(), &text));
        }
    }
    Ok(labelled)
}

/// The notes in a witness file's `text`, each labelled by the file's
/// `name` (and its place in the file, when it holds several) for errors.
fn notes_labelled(name: &str, text: &str) -> Vec<(String, String)> {
    let notes = witness::notes_in(text);
    let many = notes.len() > 1;
    notes
        .into_iter()
        .enumerate()
        .map(|(i, note)| {
            let label = if many {
                format!("{name} (note {} in the file)", i + 1)
            } else {
                name.to_owned()
            };
            (label, note)
        })
        .collect()
}

/// The checked records' root, if it is the root of the Merkle tree the
/// log kept as each record was appended (what the server signs): records
/// rewritten in the database and re-chained pass the chain, not this.
fn kept_tree_matches(db: &ReadOnlyStore, check: &LogCheck) -> Result<merkle::Hash, String> {
    let size = check.records;
    let kept = db
        .read(move |r| {
            let mut nodes = |l: u32, i: u64| r.audit_tree_node(l, i).ok().flatten();
            Ok(merkle::root(&mut nodes, size).map_err(|e| e.to_string()))
        })
        .map_err(|e| e.to_string())
        .and_then(|root| root)
        .map_err(|e| format!("the log's own tree cannot be read: {e}"))?;
    let root = check.tree.root();
    if kept != root {
        return Err(format!(
            "the records do not hash to the log's own tree at size {size}: a record was changed"
        ));
    }
    Ok(root)
}

/// A record as an OCSF event: Authorization (3003) for decisions and
/// reviews, API Activity (6003) for the rest.
fn ocsf(rec: &AuditRecord) -> serde_json::Value {
    let details = rec.details.value();
    let authz = matches!(
        rec.kind.as_str(),
        "decision" | "review" | "grant_consumed" | "grant_refused"
    );
    let (class_uid, class_name, category_uid) = if authz {
        (3003, "Authorization", 3)
    } else {
        (6003, "API Activity", 6)
    };
    let time = chrono::DateTime::parse_from_rfc3339(&rec.ts)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    let outcome = details
        .get("outcome")
        .and_then(|o| o.as_str())
        .unwrap_or("");
    let (status_id, status) = match outcome {
        "allow" => (1, "Success"),
        "deny" => (2, "Failure"),
        _ => (0, "Unknown"),
    };
    json!({
        "class_uid": class_uid, "class_name": class_name, "category_uid": category_uid,
        "activity_id": 99, "activity_name": rec.kind,
        "type_uid": class_uid * 100 + 99,
        "severity_id": 1, "time": time, "status_id": status_id, "status": status,
        "actor": {"user": {"name": rec.actor}},
        "api": {"operation": rec.kind},
        "resources": details.get("resource").map(|r| vec![r.clone()]).unwrap_or_default(),
        "message": format!("{} {}", rec.kind, rec.subject),
        "metadata": {
            "product": {"name": "Airlock", "vendor_name": "Airlock"},
            "version": "1.1.0",
            "uid": rec.hash.to_string(),
            "sequence": rec.seq,
        },
        "unmapped": {"subject": rec.subject, "details": details, "prev_hash": rec.prev_hash.to_string()},
    })
}

/// `airlock audit prove --config FILE --seq N`: an inclusion proof of
/// record N in the newest checkpoint, with the record and the note, for a
/// third party to check.
pub fn prove(config: &Path, seq: u64) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(config)?;
    let db = ReadOnlyStore::new(cfg.storage.url.as_str(), &cfg.base_dir)?;
    let out = db.read(move |r| {
        let Some((size, note)) = r.audit_notes()?.last().cloned() else {
            return Ok(Err("no checkpoint has been signed yet".to_owned()));
        };
        let size = u64::try_from(size).unwrap_or(0);
        if seq == 0 || seq > size {
            return Ok(Err(format!(
                "record {seq} is not in the newest checkpoint (size {size})"
            )));
        }
        let rec = r
            .audit_after(i64::try_from(seq - 1).unwrap_or(0), 1)?
            .into_iter()
            .next();
        let mut nodes = |l: u32, i: u64| r.audit_tree_node(l, i).ok().flatten();
        let proof = merkle::inclusion_proof(&mut nodes, seq - 1, size);
        Ok::<_, airlock_store::StoreError>(match (rec, proof) {
            (Some(rec), Ok(p)) => Ok((rec.export_line(), p, size, note)),
            _ => Err("the tree is incomplete".to_owned()),
        })
    })?;
    let (line, proof, size, note) = match out {
        Ok(x) => x,
        Err(e) => bail!(e),
    };
    let b64 = |h: &merkle::Hash| base64::engine::general_purpose::STANDARD.encode(h);
    println!(
        "{}",
        json!({
            "seq": seq, "leaf_index": seq - 1, "size": size,
            "record": line,
            "leaf_hash": b64(&merkle::leaf_hash(line.as_bytes())),
            "proof": proof.iter().map(b64).collect::<Vec<_>>(),
            "checkpoint": note,
        })
    );
    Ok(ExitCode::SUCCESS)
}
