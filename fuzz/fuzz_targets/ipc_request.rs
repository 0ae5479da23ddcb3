//! A frame payload from any local process: the server's request parser and the client's response parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passmesh_ipc::{Request, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        // Whatever parsed must encode again and parse to the same kind of request.
        let bytes = serde_json::to_vec(&request).expect("a parsed request encodes");
        let again: Request = serde_json::from_slice(&bytes).expect("an encoded request parses");
        assert_eq!(again.id, request.id);
        assert_eq!(again.body.kind(), request.body.kind());
    }
    let _ = serde_json::from_slice::<Response>(data);
});
