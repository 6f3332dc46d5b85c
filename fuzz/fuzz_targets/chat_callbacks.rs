//! Slack and Discord interaction payloads (the bodies of their signed
//! callbacks) on arbitrary bytes: read as an interaction or refused, never
//! a panic; and, for Slack, the same payload read the same whether it
//! came percent-encoded or not.
#![no_main]

use libfuzzer_sys::fuzz_target;

use airlock_notify::{discord, slack};

fuzz_target!(|data: &[u8]| {
    let _ = discord::interaction::Interaction::parse(data);
    let direct = slack::interaction::Interaction::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", text)
            .finish();
        let encoded = slack::interaction::Interaction::parse(form.as_bytes());
        // A body that already read as a form may hold other fields; one
        // that did not must read, once encoded, as its JSON says.
        if direct.is_err() {
            let json_ok = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(
                encoded == Err(slack::interaction::Refusal::NoPayload),
                !json_ok,
                "{text:?}"
            );
        }
    }
});
