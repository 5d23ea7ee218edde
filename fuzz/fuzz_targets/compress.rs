//! Fuzz target: the `SETCLUSTER ... COMPRESS` payload decoder (base64 of gzip of undermoon JSON).
//! Inputs are tried both as the payload itself and, to get past base64 and gzip quickly, as the
//! JSON inside a payload built here.
#![no_main]

use std::io::Write;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use umcluster::topology::compress;

fuzz_target!(|data: &[u8]| {
    let _ = compress::decode(data);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if gz.write_all(data).is_ok() {
        if let Ok(bytes) = gz.finish() {
            let payload = base64::engine::general_purpose::STANDARD.encode(bytes);
            let _ = compress::decode(payload.as_bytes());
        }
    }
});
