//! Fuzz target: the `UMCTL SETREPL` grammar. Input: the arguments after `SETREPL`, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::topology::setrepl;

fuzz_target!(|data: &[u8]| {
    let args: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let _ = setrepl::parse(&args);
});
