//! SQL classification (libpg_query's parse tree walked for relations) on
//! arbitrary text: an answer or a refusal, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = airlock_proxy_pg::classify::classify(sql);
    }
});
