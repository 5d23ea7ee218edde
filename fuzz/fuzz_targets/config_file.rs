//! Fuzz target: the `config-file` loader (`topology::persist::decode`), which reads what a
//! previous run (or an operator's editor) left on disk. Any input must decode or be refused,
//! never panic; what decodes must survive a write/read round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::topology::persist;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(saved) = persist::decode(text) {
        let again = persist::decode(&persist::encode(&saved));
        assert_eq!(again.as_ref(), Ok(&saved));
    }
});
