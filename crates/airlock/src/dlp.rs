//! `airlock dlp scan`: runs the DLP scanner over files, streaming, and
//! prints one line per finding with its byte offsets (never the value).

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use airlock_dlp::{Config, Scanner};
use anyhow::{anyhow, Context};
use serde::Deserialize;

/// Bytes read at a time: large enough that the scanner's re-scanned window
/// (8 KiB) is a small share of each read, small enough to bound memory.
const READ_CHUNK: usize = 256 << 10;

/// Files up to this size are scanned on every core (the first segment's
/// findings are printed as found, the others' held until their segment is
/// joined); larger ones stream on one thread, so memory stays bounded
/// whatever the size.
const PARALLEL_MAX: u64 = 1 << 30;

/// A file read at offsets, for the parallel scan.
#[cfg(unix)]
struct FileAt(File);

#[cfg(unix)]
impl airlock_dlp::ReadAt for FileAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
}

/// The `[dlp]` table of a configuration file, which must be there; the
/// rest is not this command's business (and need not be valid for it).
fn load_config(path: &Path) -> anyhow::Result<Config> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    match table.get("dlp") {
        Some(v) => {
            Config::deserialize(v.clone()).with_context(|| format!("{}: [dlp]", path.display()))
        }
        // Asked for custom detectors and given none (a misspelt table):
        // scanning with the built-ins alone would look like a clean file.
        None => Err(anyhow!(
            "{} has no [dlp] table: custom patterns and dictionaries go there",
            path.display()
        )),
    }
}

pub fn scan(json: bool, config: Option<&Path>, files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let config = match config {
        Some(p) => load_config(p)?,
        None => Config::default(),
    };
    let scanner = Scanner::new(&config).map_err(|e| anyhow!("{e}"))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut failed = false;
    let mut chunk = vec![0u8; READ_CHUNK];
    for path in files {
        let name = path.to_string_lossy();
        let shown = if json {
            serde_json::Value::from(name.as_ref()).to_string()
        } else {
            airlock_core::display::visible(&name).to_string()
        };
        let result = (|| -> std::io::Result<()> {
            let mut file = File::open(path)?;
            #[cfg(unix)]
            {
                // Only a regular file has a length to cut (a pipe streams).
                let meta = file.metadata()?;
                let len = meta.len();
                if meta.is_file() && len <= PARALLEL_MAX {
                    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                    return scanner.scan_parallel(&FileAt(file), len, threads, &mut |f| {
                        print_finding(&mut out, json, &shown, &f)
                    });
                }
            }
            let mut stream = scanner.stream();
            loop {
                let n = file.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                for f in stream.feed(&chunk[..n]) {
                    print_finding(&mut out, json, &shown, &f)?;
                }
            }
            for f in stream.finish() {
                print_finding(&mut out, json, &shown, &f)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            out.flush().ok();
            eprintln!(
                "airlock: dlp scan: cannot read {}: {e}",
                airlock_core::display::visible(&name)
            );
            failed = true;
        }
    }
    out.flush()?;
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// One finding, as a line. The file name is escaped once per file (as a
/// JSON string, or with hidden characters made visible), not per finding:
/// a dense file has millions of findings.
fn print_finding(
    out: &mut impl Write,
    json: bool,
    file: &str,
    f: &airlock_dlp::Finding,
) -> std::io::Result<()> {
    if json {
        // `file` is already a JSON string literal; the type is a detector
        // name (letters, digits, `_`), which needs no escaping.
        writeln!(
            out,
            r#"{{"file":{file},"start":{},"end":{},"type":"{}"}}"#,
            f.start, f.end, f.kind
        )
    } else {
        writeln!(out, "{file}:{}-{}: {}", f.start, f.end, f.kind)
    }
}
