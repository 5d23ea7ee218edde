//! Fuzz target: one `umcluster.import` entry as the destination reads it, its spec and its value
//! (the spec is the input up to the first newline, the value the rest). Whatever a source or a
//! forged client sends: parsed or refused, never a panic; a piece's elements never read past
//! their argument.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::transfer::{parse_import_spec, unpack_elements, Collection, ImportKind};

fuzz_target!(|data: &[u8]| {
    let (spec, value) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Some((ImportKind::Piece { of, .. }, _)) = parse_import_spec(spec) {
        if let Some(elements) = unpack_elements(value, of) {
            let bytes: usize = elements.iter().map(|e| e.len() + 4).sum();
            assert_eq!(bytes, value.len());
            assert_eq!(elements.len() % of.arity(), 0);
        }
    }
    for of in [Collection::Hash, Collection::List] {
        let _ = unpack_elements(data, of);
    }
});
