//! The signed membership values a replica reads from another's document — removals, epoch descriptions — and
//! epoch-key wraps: strict parse (what parses encodes back to the same bytes), and no wrap opens without its key.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    passmesh_crdt::members::fuzz_values(data);
});
