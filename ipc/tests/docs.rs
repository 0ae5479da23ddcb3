//! Every JSON example in `docs/ipc.md` must be a frame this crate accepts.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use passmesh_ipc::{Request, Response};

fn json_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```json") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "unterminated code block");
    blocks
}

#[test]
fn documented_frames_parse() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/ipc.md");
    let markdown = std::fs::read_to_string(&path).unwrap();
    let blocks = json_blocks(&markdown);
    let mut requests = 0;
    let mut responses = 0;
    for block in &blocks {
        let value: serde_json::Value =
            serde_json::from_str(block).unwrap_or_else(|e| panic!("not JSON ({e}):\n{block}"));
        if value.get("ok").is_some() {
            let response: Response = serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("not a response ({e}):\n{block}"));
            // The example shows everything the response carries, in its wire form.
            assert_eq!(serde_json::to_value(&response).unwrap(), value, "{block}");
            responses += 1;
        } else {
            let request: Request = serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("not a request ({e}):\n{block}"));
            assert_eq!(serde_json::to_value(&request).unwrap(), value, "{block}");
            requests += 1;
        }
    }
    // One example of each request and each success answer, plus the error example.
    assert_eq!(requests, 24);
    assert_eq!(responses, 25);
}
