//! Audit-log entries a replica reads from another's document: strict parse (what decodes encodes back to the same
//! bytes) and signature checking of whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    passmesh_crdt::audit::fuzz_entry(data);
});
