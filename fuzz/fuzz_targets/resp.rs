//! Fuzz target: the bounded RESP decoder, and the command table built from a decoded `COMMAND`
//! reply. A decoded value must not claim more bytes than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::command_table::CommandTable;
use umcluster::resp;

fuzz_target!(|data: &[u8]| {
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
