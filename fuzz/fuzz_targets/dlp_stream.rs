//! Differential: the streaming DLP scanner fed the input in chunks (cut
//! where the first bytes say) finds exactly what one whole-buffer scan
//! finds, with the same offsets.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn scanner() -> &'static airlock_dlp::Scanner {
    static S: OnceLock<airlock_dlp::Scanner> = OnceLock::new();
    S.get_or_init(|| airlock_dlp::Scanner::new(&airlock_dlp::Config::default()).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let s = scanner();
    let whole = s.scan(rest);
    let step = usize::from(cut).max(1);
    let mut stream = s.stream();
    let mut found = Vec::new();
    for chunk in rest.chunks(step) {
        found.extend(stream.feed(chunk));
    }
    found.extend(stream.finish());
    assert_eq!(whole, found, "chunks of {step}");
});
