//! The API's JSON bodies on arbitrary bytes: parsed or refused, never a
//! panic; what parses serializes and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn round_trip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec(&v).unwrap();
        let again: T = serde_json::from_slice(&text).unwrap();
        assert_eq!(v, again);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<airlock_api::CheckBody>(data);
    round_trip::<airlock_api::ReviewBody>(data);
});
