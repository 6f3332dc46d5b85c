//! `airlock dlp scan`: the real binary over generated files; the offsets it
//! prints must point at the planted values, across its read boundaries.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn scan(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(BIN)
        .args(["dlp", "scan"])
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (
        out.status.code().unwrap(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dlp_scan_json_offsets_point_at_the_planted_values() {
    let dir = tempfile::tempdir().unwrap();
    // Over 3 MiB so values straddle the command's 256 KiB reads.
    let doc = airlock_dlp::corpus::generate(11, 3_500_000);
    let path = dir.path().join("export.txt");
    std::fs::write(&path, &doc.bytes).unwrap();
    let file = path.to_str().unwrap();
    let (code, found, stderr) = scan(&["--json", file]);
    assert_eq!(code, 0, "{stderr}");
    let got: Vec<(u64, u64, String)> = found
        .iter()
        .map(|f| {
            assert_eq!(f["file"], file);
            (
                f["start"].as_u64().unwrap(),
                f["end"].as_u64().unwrap(),
                f["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    // Exactly what the library finds over the whole file in memory: the
    // command's reads change nothing.
    let scanner = airlock_dlp::Scanner::new(&airlock_dlp::Config::default()).unwrap();
    let whole: Vec<(u64, u64, String)> = scanner
        .scan(&doc.bytes)
        .into_iter()
        .map(|f| (f.start, f.end, f.kind.as_str().to_owned()))
        .collect();
    assert_eq!(got, whole);
    // And every planted value is there with its offsets (the corpus also
    // holds phone- and IP-shaped look-alikes, so it is a subset).
    let reported: std::collections::HashSet<_> = got.iter().cloned().collect();
    for l in &doc.labels {
        let want = (l.start as u64, l.end as u64, l.kind.as_str().to_owned());
        assert!(reported.contains(&want), "missing {want:?}");
    }
    // Never the values themselves.
    let text = found.iter().map(Value::to_string).collect::<String>();
    assert!(!text.contains('@'));
}

#[test]
fn dlp_scan_text_output_custom_detectors_and_unreadable_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![b'-'; (1 << 20) - 5];
    data.extend_from_slice(b" EMP-123456 and carol@example.com\n");
    let path = dir.path().join("a.log");
    std::fs::write(&path, &data).unwrap();
    let config = dir.path().join("airlock.toml");
    std::fs::write(
        &config,
        "[dlp]\n[[dlp.patterns]]\nname = \"employee_id\"\nregex = 'EMP-[0-9]{6}'\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["dlp", "scan", "--text", "--config"])
        .arg(&config)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let p = path.display();
    let start = (1u64 << 20) - 4;
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "{p}:{start}-{}: employee_id\n{p}:{}-{}: email\n",
            start + 10,
            start + 15,
            start + 32
        )
    );

    // Into a pipe, without a flag: the contract's JSON objects
    // (`airlock dlp scan [--json] FILE...` prints one JSON object per
    // finding), as a harness reading the output expects.
    let (code, found, stderr) =
        scan(&["--config", config.to_str().unwrap(), path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let got: Vec<_> = found
        .iter()
        .map(|f| (f["type"].as_str().unwrap(), f["start"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, [("employee_id", start), ("email", start + 15)]);

    // A missing file: a clear message, exit 2, the other files still scanned.
    let missing = dir.path().join("missing.csv");
    let (code, found, stderr) =
        scan(&["--json", missing.to_str().unwrap(), path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read") && stderr.contains("missing.csv"),
        "{stderr}"
    );
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["type"], "email");

    // An invalid custom pattern is refused.
    std::fs::write(
        &config,
        "[dlp]\n[[dlp.patterns]]\nname = \"x\"\nregex = '('\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["dlp", "scan", "--config"])
        .arg(&config)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pattern x"));

    // Custom detectors asked for and none found (a misspelt table): an
    // error, not a scan with the built-ins alone that looks clean.
    std::fs::write(
        &config,
        "[dlpp]\n[[dlpp.patterns]]\nname = \"x\"\nregex = 'x'\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["dlp", "scan", "--config"])
        .arg(&config)
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [dlp] table"));
}

/// A large regular file is scanned on every core; a pipe streams on one
/// thread. Both print the same findings, the same offsets, in order (the
/// generated corpus is dense, so findings straddle the threads' cuts).
#[test]
fn dlp_scan_of_a_large_file_matches_the_streamed_scan() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.txt");
    let doc = airlock_dlp::corpus::generate(5, 12 << 20);
    std::fs::write(&file, &doc.bytes).unwrap();
    let (code, whole, err) = scan(&["--json", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(whole.len() > 10_000);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {} | {BIN} dlp scan --json /dev/stdin",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success());
    let streamed: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let spans = |v: &[Value]| -> Vec<(u64, u64, String)> {
        v.iter()
            .map(|f| {
                (
                    f["start"].as_u64().unwrap(),
                    f["end"].as_u64().unwrap(),
                    f["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(spans(&whole), spans(&streamed));
}
