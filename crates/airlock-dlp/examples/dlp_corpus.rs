//! Writes a generated corpus for benchmarks: `dlp_corpus OUT MEGABYTES`
//! (deterministic), or `dlp_corpus --patterns` to print the built-in raw
//! patterns one per line (for `rg -e`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--patterns") {
        for p in airlock_dlp::builtin_patterns() {
            println!("{p}");
        }
        return;
    }
    let (Some(out), Some(mb)) = (args.first(), args.get(1)) else {
        eprintln!("usage: dlp_corpus OUT MEGABYTES | dlp_corpus --patterns");
        std::process::exit(2);
    };
    let target = mb.parse::<usize>().expect("MEGABYTES") << 20;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).expect("OUT"));
    let mut written = 0;
    let mut seed = 1;
    while written < target {
        let doc = airlock_dlp::corpus::generate(seed, 4 << 20);
        file.write_all(&doc.bytes).unwrap();
        written += doc.bytes.len();
        seed += 1;
    }
}
