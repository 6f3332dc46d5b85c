//! The PostgreSQL wire codec on arbitrary bytes: a startup packet, then
//! frames, each body read as every message the proxy reads. Nothing may
//! panic, and no declared length may make it reserve memory.
#![no_main]

use airlock_proxy_pg::codec;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let _ = codec::startup(&mut buf);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = codec::frame(&mut buf) {
        let body = f.body();
        let _ = codec::parse(body.clone());
        let _ = codec::bind(body.clone());
        let _ = codec::execute(body.clone());
        let _ = codec::target(body.clone(), "portal");
        let _ = codec::query(body.clone());
        let _ = codec::sasl_initial(body.clone());
        let _ = codec::ready_status(&body);
        let _ = codec::data_row(body.clone());
        let _ = codec::row_description(body.clone());
        let _ = codec::fields(body.clone());
        let _ = codec::authentication(body.clone());
        let _ = codec::backend_key(body);
    }
});
