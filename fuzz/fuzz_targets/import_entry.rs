//! Fuzz target: one `umcluster.import` entry as the destination reads it, its spec and its value
//! (the spec is the input up to the first newline, the value the rest). Whatever a source or a
//! forged client sends: parsed or refused, never a panic; a piece's elements never read past
//! their argument, and a stream piece read is well formed. The input as an import's error reply
//! (the source reads which entry the destination refused): the index it names survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use umcluster::transfer::{
    parse_import_spec, read_stream_piece, refused_entry, refused_entry_error, unpack_elements,
    Collection, ImportKind,
};

fuzz_target!(|data: &[u8]| {
    let (spec, value) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    if let Some((ImportKind::Piece { of, last, .. }, _)) = parse_import_spec(spec) {
        if let Some(elements) = unpack_elements(value, of) {
            let bytes: usize = elements.iter().map(|e| e.len() + 4).sum();
            assert_eq!(bytes, value.len());
            assert_eq!(elements.len() % of.arity(), 0);
            if let Some(piece) = read_stream_piece(&elements, last) {
                assert!(piece.entries.windows(2).all(|w| w[0].id < w[1].id));
                assert!(piece.entries.iter().all(|e| !e.fields.is_empty() && e.fields.len() % 2 == 0));
            }
        }
    }
    for of in [Collection::Hash, Collection::List] {
        let _ = unpack_elements(data, of);
    }
    let error = String::from_utf8_lossy(data);
    if let Some((n, why)) = refused_entry(&error) {
        let again = refused_entry_error(n, why);
        assert_eq!(refused_entry(&again).map(|(m, _)| m), Some(n));
    }
});
