//! Splitting text for Teams: the first byte is the limit, the rest the text. The parts concatenate to the
//! text, none is empty or over the limit in UTF-16 units.

use agentgate::fuzzing::{split_text, utf16_len};

fn check(data: &[u8]) {
    let Some((&limit, rest)) = data.split_first() else { return };
    let limit = usize::from(limit);
    let text = String::from_utf8_lossy(rest);
    let parts = split_text(&text, limit);
    assert_eq!(parts.concat(), text, "lossless");
    for p in &parts {
        assert!(!p.is_empty(), "no empty part");
        assert!(utf16_len(p) <= limit.max(2), "{p:?} over {limit}");
    }
    if utf16_len(&text) <= limit.max(2) {
        assert!(parts.len() <= 1, "text that fits is one part");
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| check(data));
}
