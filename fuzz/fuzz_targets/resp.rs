//! Fuzz target: the bounded RESP decoder, and the command table built from a decoded `COMMAND`
//! reply. A decoded value must not claim more bytes than it was given. Also the spec argument of
//! the mover's `umcluster.import` entries: whatever parses is written back byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::command_table::CommandTable;
use umcluster::resp;
use umcluster::transfer::{import_spec, parse_import_spec};

fuzz_target!(|data: &[u8]| {
    if let Some((kind, expire_at_ms)) = parse_import_spec(data) {
        let (spec, len) = import_spec(kind, expire_at_ms);
        assert_eq!(&spec[..len], data, "spec does not round-trip");
    }
    let mut rest = data;
    while let Ok((value, used)) = resp::decode(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "decoder consumed {used} of {}",
            rest.len()
        );
        let _ = CommandTable::from_command_reply(&value);
        rest = &rest[used..];
    }
});
