//! Policy text with Airlock's annotations, loaded as a policy directory
//! would be: loaded or refused with an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let src = airlock_policy::PolicySource {
        policies: vec![("main.cedar".into(), text.to_owned())],
        schema: None,
        entities: None,
    };
    let directory = airlock_policy::Directory::new(Vec::new());
    let _ = airlock_policy::PolicyEngine::from_source(&src, &directory);
});
